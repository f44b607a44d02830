/* Optional accelerator for epws: masking (RFC 6455 section 5.3).
 *
 * The pure-Python twin is epws.protocol.frames._apply_mask_py; tests run both on the
 * same vectors. Built by the normal install when a compiler is present; when it is
 * absent (or EPWS_BUILD_EXTENSION=no) the library falls back silently.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *
apply_mask(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, mask;
    PyObject *result = NULL;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "apply_mask(data, mask) takes 2 arguments");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result == NULL) {
        goto done;
    }
    {
        const unsigned char *src = (const unsigned char *)data.buf;
        const unsigned char *key = (const unsigned char *)mask.buf;
        unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(result);
        Py_ssize_t n = data.len, i = 0;
        uint64_t key64;
        unsigned char k8[8];
        memcpy(k8, key, 4);
        memcpy(k8 + 4, key, 4);
        memcpy(&key64, k8, 8);
        /* Eight bytes at a time; memcpy keeps unaligned access well-defined. */
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            memcpy(&w, src + i, 8);
            w ^= key64;
            memcpy(dst + i, &w, 8);
        }
        for (; i < n; i++) {
            dst[i] = src[i] ^ key[i & 3];
        }
    }
done:
    PyBuffer_Release(&mask);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask($module, data, mask, /)\n--\n\n"
     "XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot speedups_slots[] = {
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "epws._speedups", "Optional C accelerator for epws.", 0,
    speedups_methods, speedups_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
