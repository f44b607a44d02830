/* Optional accelerator for epws: masking (RFC 6455 section 5.3) and splitting a
 * whole HTTP head into its fields (the server's opening handshake).
 *
 * Each function has a pure-Python twin that tests hold it to on the same inputs:
 * epws.protocol.frames._apply_mask_py and _unmask_at_py, and
 * epws.protocol.http11._split_head_py.
 * Built by the normal install when a compiler is present; when it is absent (or
 * EPWS_BUILD_EXTENSION=no) the library falls back silently.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* dst[i] = src[i] ^ key[i % 4] for i < n. */
static void
xor_mask(unsigned char *dst, const unsigned char *src, Py_ssize_t n, const unsigned char *key)
{
    Py_ssize_t i = 0;
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
    if (result != NULL) {
        xor_mask((unsigned char *)PyBytes_AS_STRING(result), (const unsigned char *)data.buf,
                 data.len, (const unsigned char *)mask.buf);
    }
done:
    PyBuffer_Release(&mask);
    PyBuffer_Release(&data);
    return result;
}

/* The payload data[start:end] of a masked frame, unmasked with the key in the four
 * bytes in front of it, read where it lies: apply_mask(data[start:end], ...) would
 * first copy the payload into a slice (a copy per message, of up to the whole frame). */
static PyObject *
unmask_at(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    Py_ssize_t start, end;
    PyObject *result = NULL;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "unmask_at(data, start, end) takes 3 arguments");
        return NULL;
    }
    start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (start < 4 || end < start || end > data.len) {
        PyErr_SetString(PyExc_ValueError, "unmask_at needs 4 <= start <= end <= len(data)");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, end - start);
    if (result != NULL) {
        const unsigned char *buf = (const unsigned char *)data.buf;
        xor_mask((unsigned char *)PyBytes_AS_STRING(result), buf + start, end - start,
                 buf + start - 4);
    }
done:
    PyBuffer_Release(&data);
    return result;
}

/* RFC 7230 section 3.2.6 tchar: the bytes a header name is made of. */
static int
is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return 1;
    }
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A field-value byte: HTAB, SP to '~', obs-text; never CR, LF or another control. */
static int
is_value_byte(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* Where the first CRLF (or, with twice, CRLF CRLF) of buf starts, or -1. */
static Py_ssize_t
find_crlf(const unsigned char *buf, Py_ssize_t n, int twice)
{
    Py_ssize_t need = twice ? 4 : 2;
    for (Py_ssize_t i = 0; i + need <= n; i++) {
        const unsigned char *p = memchr(buf + i, '\r', (size_t)(n - i));
        if (p == NULL) {
            return -1;
        }
        i = p - buf;
        if (i + need > n) {
            return -1;
        }
        if (buf[i + 1] == '\n' && (!twice || (buf[i + 2] == '\r' && buf[i + 3] == '\n'))) {
            return i;
        }
    }
    return -1;
}

/* The twin of _split_head_py: see its docstring for the contract. */
static PyObject *
split_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t max_line, max_headers, max_header_bytes;
    PyObject *items = NULL, *index = NULL, *result = NULL;
    char *packed = NULL; /* the fields as "name: value" lines joined by CRLF */
    Py_ssize_t packed_len = 0;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "split_head(data, max_line, max_headers, max_header_bytes) takes 4 arguments");
        return NULL;
    }
    max_line = PyLong_AsSsize_t(args[1]);
    max_headers = PyLong_AsSsize_t(args[2]);
    max_header_bytes = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;
    Py_ssize_t end = find_crlf(buf, n, 1);
    Py_ssize_t first = end < 0 ? -1 : find_crlf(buf, n, 0);
    /* No whole head; an empty or overlong start line; a section over its bound; a bare
     * LF in the start line: the line-by-line parser decides. */
    if (end < 0 || first == 0 || first > max_line || (end + 2 - (first + 2)) + 2 > max_header_bytes
        || memchr(buf, '\n', (size_t)first) != NULL) {
        goto none;
    }
    items = PyList_New(0);
    index = PyDict_New();
    /* Each packed line is at most its wire line plus one byte (": " for ":"), and the
     * CRLFs between lines are the wire's. */
    packed = PyMem_Malloc((size_t)(2 * (end - first) + 1));
    if (items == NULL || index == NULL || packed == NULL) {
        if (packed == NULL) {
            PyErr_NoMemory();
        }
        goto done;
    }
    Py_ssize_t pos = first + 2, count = 0;
    while (pos < end + 2) {
        Py_ssize_t name_end = pos;
        while (name_end < n && is_tchar(buf[name_end])) {
            name_end++;
        }
        if (name_end == pos || name_end >= n || buf[name_end] != ':') {
            goto none;
        }
        Py_ssize_t value_end = name_end + 1;
        while (value_end < n && is_value_byte(buf[value_end])) {
            value_end++;
        }
        /* The value must end in CRLF, inside the section. */
        if (value_end + 2 > end + 2 || buf[value_end] != '\r' || buf[value_end + 1] != '\n') {
            goto none;
        }
        if (value_end - pos > max_line || ++count > max_headers) {
            goto none;
        }
        Py_ssize_t vs = name_end + 1, ve = value_end;
        while (vs < ve && (buf[vs] == ' ' || buf[vs] == '\t')) {
            vs++;
        }
        while (ve > vs && (buf[ve - 1] == ' ' || buf[ve - 1] == '\t')) {
            ve--;
        }
        PyObject *name = PyUnicode_DecodeLatin1((const char *)buf + pos, name_end - pos, NULL);
        PyObject *value = PyUnicode_DecodeLatin1((const char *)buf + vs, ve - vs, NULL);
        PyObject *key = NULL, *pair = NULL;
        int failed = name == NULL || value == NULL;
        if (!failed) {
            /* Names are ASCII here, so lowering the bytes is str.lower(). */
            char small[64];
            Py_ssize_t len = name_end - pos;
            char *low = len <= (Py_ssize_t)sizeof small ? small : PyMem_Malloc((size_t)len);
            if (low == NULL) {
                PyErr_NoMemory();
                failed = 1;
            } else {
                for (Py_ssize_t i = 0; i < len; i++) {
                    unsigned char c = buf[pos + i];
                    low[i] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
                }
                key = PyUnicode_DecodeASCII(low, len, NULL);
                if (low != small) {
                    PyMem_Free(low);
                }
                pair = PyTuple_Pack(2, name, value);
                failed = key == NULL || pair == NULL || PyList_Append(items, pair) < 0;
            }
        }
        if (!failed) {
            PyObject *values = PyDict_GetItemWithError(index, key); /* borrowed */
            if (values != NULL) {
                failed = PyList_Append(values, value) < 0;
            } else if (PyErr_Occurred()) {
                failed = 1;
            } else {
                values = PyList_New(1);
                if (values == NULL) {
                    failed = 1;
                } else {
                    Py_INCREF(value);
                    PyList_SET_ITEM(values, 0, value);
                    failed = PyDict_SetItem(index, key, values) < 0;
                    Py_DECREF(values);
                }
            }
        }
        Py_XDECREF(name);
        Py_XDECREF(value);
        Py_XDECREF(key);
        Py_XDECREF(pair);
        if (failed) {
            goto done;
        }
        if (packed_len) {
            packed[packed_len++] = '\r';
            packed[packed_len++] = '\n';
        }
        memcpy(packed + packed_len, buf + pos, (size_t)(name_end - pos));
        packed_len += name_end - pos;
        packed[packed_len++] = ':';
        packed[packed_len++] = ' ';
        memcpy(packed + packed_len, buf + vs, (size_t)(ve - vs));
        packed_len += ve - vs;
        pos = value_end + 2;
    }
    {
        PyObject *start = PyBytes_FromStringAndSize((const char *)buf, first);
        PyObject *block = PyBytes_FromStringAndSize(packed, packed_len);
        if (start != NULL && block != NULL) {
            result = Py_BuildValue("(OOOOn)", start, items, index, block, end + 4);
        }
        Py_XDECREF(start);
        Py_XDECREF(block);
    }
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(packed);
    Py_XDECREF(items);
    Py_XDECREF(index);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask($module, data, mask, /)\n--\n\n"
     "XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."},
    {"unmask_at", (PyCFunction)(void (*)(void))unmask_at, METH_FASTCALL,
     "unmask_at($module, data, start, end, /)\n--\n\n"
     "``data[start:end]`` unmasked with the key ``data[start - 4:start]``."},
    {"split_head", (PyCFunction)(void (*)(void))split_head, METH_FASTCALL,
     "split_head($module, data, max_line, max_headers, max_header_bytes, /)\n--\n\n"
     "A whole, well-formed HTTP head split into its fields, or None (see http11.py)."},
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
