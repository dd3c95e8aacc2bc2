/*
 * Benchmark prototype, not product code: the calling thread's side of one
 * instrumented node in C, to measure what a compiled hot path would give.
 *
 * `Fast.span(name, kind=...)` starts a root or child span (two random ids from
 * the given `getrandbits`, the wall and monotonic clocks, a context variable
 * set); leaving the `with` block resets the variable, builds the same 13-field
 * span record as `TracingService.finish` and appends it to the trace
 * collector's queue. `Fast.increment` / `Fast.observe_latency` look the
 * `(metric, labels)` pair up in a dict of validated label sets (as
 * `MetricsCollector` does), check the value, build the same
 * `(metric, labels, value)` record and append it to the metrics collector's
 * queue. Records are applied by the real collector threads.
 *
 * Left out, as the product's slow paths would be: attributes, events, error
 * status, outboxes, sampling, validation of names and of unseen label sets, and
 * the queue's overflow accounting (a full queue raises here).
 * Built by benchmarks/cproto/__init__.py at benchmark time when a C compiler is
 * present.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <time.h>

static PyObject *str_ok, *str_append, *str_wake_at, *str_wake, *str_queue, *str_kind,
    *str_internal;
static PyObject *empty_tuple, *bits128, *bits64, *zero;

static long long now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

typedef struct {
    PyObject_HEAD
    PyObject *ctxvar;      /* ContextVar holding the current FastSpan */
    PyObject *getrandbits; /* bound random.Random.getrandbits */
    PyObject *spans;       /* the trace collector (its _queue is read per send) */
    PyObject *metrics;     /* the metrics collector */
    PyObject *counters;    /* dict: (metric, label pairs) -> validated labels */
    PyObject *histograms;
} Fast;

typedef struct {
    PyObject_HEAD
    Fast *fast;
    PyObject *name, *kind, *trace_id, *span_id, *parent, *token;
    long long start_ns, perf_start;
    int ended;
} FastSpan;

static PyTypeObject FastSpanType;

/* Append `record` to `collector._queue` (a RecordQueue) and wake its consumer
   as RecordQueue.offer does; 0 on success, -1 with an exception set. */
static int offer(PyObject *collector, PyObject *record) {
    PyObject *queue = PyObject_GetAttr(collector, str_queue);
    if (queue == NULL) return -1;
    PyObject *items = PyObject_GetAttr(queue, str_queue);
    if (items == NULL) { Py_DECREF(queue); return -1; }
    int result = -1;
    Py_ssize_t depth = PyObject_Length(items);
    if (depth < 0) goto done;
    if (depth >= 65536) { PyErr_SetString(PyExc_OverflowError, "prototype queue full"); goto done; }
    PyObject *r = PyObject_CallMethodOneArg(items, str_append, record);
    if (r == NULL) goto done;
    Py_DECREF(r);
    PyObject *wake_at = PyObject_GetAttr(queue, str_wake_at);
    if (wake_at == NULL) goto done;
    long long threshold = PyLong_AsLongLong(wake_at);
    Py_DECREF(wake_at);
    if (threshold == -1 && PyErr_Occurred()) goto done;
    if (depth >= threshold - 1) {
        r = PyObject_CallMethodNoArgs(queue, str_wake);
        if (r == NULL) goto done;
        Py_DECREF(r);
    }
    result = 0;
done:
    Py_DECREF(items);
    Py_DECREF(queue);
    return result;
}

static void span_dealloc(FastSpan *s) {
    Py_XDECREF(s->fast);
    Py_XDECREF(s->name);
    Py_XDECREF(s->kind);
    Py_XDECREF(s->trace_id);
    Py_XDECREF(s->span_id);
    Py_XDECREF(s->parent);
    Py_XDECREF(s->token);
    PyObject_Free(s);
}

static PyObject *span_enter(PyObject *self, PyObject *unused) {
    Py_INCREF(self);
    return self;
}

static PyObject *span_exit(FastSpan *s, PyObject *const *args, Py_ssize_t nargs) {
    if (s->ended) Py_RETURN_NONE;
    s->ended = 1;
    long long end = s->start_ns + (now_ns(CLOCK_MONOTONIC) - s->perf_start);
    PyObject *current = NULL;
    if (PyContextVar_Get(s->fast->ctxvar, NULL, &current) < 0) return NULL;
    int is_current = current == (PyObject *)s;
    Py_XDECREF(current);
    if (is_current && PyContextVar_Reset(s->fast->ctxvar, s->token) < 0) return NULL;
    PyObject *parent_id = s->parent == Py_None ? zero : ((FastSpan *)s->parent)->span_id;
    PyObject *start = PyLong_FromLongLong(s->start_ns);
    PyObject *stop = PyLong_FromLongLong(end);
    PyObject *record = NULL;
    if (start != NULL && stop != NULL) {
        record = PyTuple_Pack(13, s->trace_id, s->span_id, parent_id, s->name, s->kind, start,
                              stop, str_ok, Py_None, Py_None, empty_tuple, empty_tuple, Py_False);
    }
    Py_XDECREF(start);
    Py_XDECREF(stop);
    if (record == NULL) return NULL;
    int failed = offer(s->fast->spans, record);
    Py_DECREF(record);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef span_methods[] = {
    {"__enter__", (PyCFunction)span_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))span_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastSpanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastpath.FastSpan",
    .tp_basicsize = sizeof(FastSpan),
    .tp_dealloc = (destructor)span_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_methods = span_methods,
};

static PyObject *fast_span(Fast *f, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    if (nargs != 1 || !PyUnicode_CheckExact(args[0]) || PyUnicode_GET_LENGTH(args[0]) == 0) {
        PyErr_SetString(PyExc_ValueError, "span name must be a non-empty str");
        return NULL;
    }
    PyObject *kind = NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        if (PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, i), str_kind) != 0) {
            PyErr_SetString(PyExc_TypeError, "the prototype takes only kind=");
            return NULL;
        }
        kind = args[nargs + i];
    }
    PyObject *parent = NULL;
    if (PyContextVar_Get(f->ctxvar, Py_None, &parent) < 0) return NULL;
    FastSpan *s = PyObject_New(FastSpan, &FastSpanType);
    if (s == NULL) { Py_DECREF(parent); return NULL; }
    s->ended = 0;
    s->token = s->trace_id = s->span_id = NULL;
    Py_INCREF(f);
    s->fast = f;
    Py_INCREF(args[0]);
    s->name = args[0];
    s->kind = kind != NULL ? kind : str_internal;
    Py_INCREF(s->kind);
    s->parent = parent;
    if (parent == Py_None) {
        s->trace_id = PyObject_CallOneArg(f->getrandbits, bits128);
    } else {
        s->trace_id = ((FastSpan *)parent)->trace_id;
        Py_INCREF(s->trace_id);
    }
    s->span_id = PyObject_CallOneArg(f->getrandbits, bits64);
    if (s->trace_id == NULL || s->span_id == NULL) { Py_DECREF(s); return NULL; }
    s->start_ns = now_ns(CLOCK_REALTIME);
    s->perf_start = now_ns(CLOCK_MONOTONIC);
    s->token = PyContextVar_Set(f->ctxvar, (PyObject *)s);
    if (s->token == NULL) { Py_DECREF(s); return NULL; }
    return (PyObject *)s;
}

static PyObject *record_metric(Fast *f, PyObject *cache, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames, int counter) {
    if (nargs < 1 || nargs > 2 || (!counter && nargs != 2)) {
        PyErr_SetString(PyExc_TypeError, "metric, value and keyword labels expected");
        return NULL;
    }
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *pairs = PyTuple_New(nkw);
    if (pairs == NULL) return NULL;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *pair = PyTuple_Pack(2, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]);
        if (pair == NULL) { Py_DECREF(pairs); return NULL; }
        PyTuple_SET_ITEM(pairs, i, pair);
    }
    PyObject *key = PyTuple_Pack(2, args[0], pairs);
    Py_DECREF(pairs);
    if (key == NULL) return NULL;
    PyObject *labels = PyDict_GetItemWithError(cache, key); /* borrowed */
    Py_DECREF(key);
    if (labels == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "label set not validated");
        return NULL;
    }
    PyObject *value = nargs == 2 ? args[1] : NULL;
    if (value == NULL) {
        value = PyLong_FromLong(1);
    } else if (PyFloat_CheckExact(value)) {
        double d = PyFloat_AS_DOUBLE(value);
        if (!(d >= 0.0 && d <= 1.7976931348623157e308)) {
            PyErr_SetString(PyExc_ValueError, "value must be finite and >= 0");
            return NULL;
        }
        Py_INCREF(value);
    } else if (PyLong_CheckExact(value)) {
        if (_PyLong_Sign(value) < 0) {
            PyErr_SetString(PyExc_ValueError, "value must be >= 0");
            return NULL;
        }
        Py_INCREF(value);
    } else {
        PyErr_SetString(PyExc_TypeError, "value must be an int or float");
        return NULL;
    }
    if (value == NULL) return NULL;
    PyObject *record = PyTuple_Pack(3, args[0], labels, value);
    Py_DECREF(value);
    if (record == NULL) return NULL;
    int failed = offer(f->metrics, record);
    Py_DECREF(record);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

static PyObject *fast_increment(Fast *f, PyObject *const *args, Py_ssize_t nargs, PyObject *kw) {
    return record_metric(f, f->counters, args, nargs, kw, 1);
}

static PyObject *fast_observe(Fast *f, PyObject *const *args, Py_ssize_t nargs, PyObject *kw) {
    return record_metric(f, f->histograms, args, nargs, kw, 0);
}

static int fast_init(Fast *f, PyObject *args, PyObject *kwargs) {
    PyObject *ctxvar, *getrandbits, *spans, *metrics, *counters, *histograms;
    if (!PyArg_ParseTuple(args, "OOOOO!O!", &ctxvar, &getrandbits, &spans, &metrics,
                          &PyDict_Type, &counters, &PyDict_Type, &histograms)) {
        return -1;
    }
    Py_INCREF(ctxvar); Py_INCREF(getrandbits); Py_INCREF(spans); Py_INCREF(metrics);
    Py_INCREF(counters); Py_INCREF(histograms);
    Py_XSETREF(f->ctxvar, ctxvar);
    Py_XSETREF(f->getrandbits, getrandbits);
    Py_XSETREF(f->spans, spans);
    Py_XSETREF(f->metrics, metrics);
    Py_XSETREF(f->counters, counters);
    Py_XSETREF(f->histograms, histograms);
    return 0;
}

static void fast_dealloc(Fast *f) {
    Py_XDECREF(f->ctxvar);
    Py_XDECREF(f->getrandbits);
    Py_XDECREF(f->spans);
    Py_XDECREF(f->metrics);
    Py_XDECREF(f->counters);
    Py_XDECREF(f->histograms);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyMethodDef fast_methods[] = {
    {"span", (PyCFunction)(void (*)(void))fast_span, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"increment", (PyCFunction)(void (*)(void))fast_increment, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"observe_latency", (PyCFunction)(void (*)(void))fast_observe, METH_FASTCALL | METH_KEYWORDS,
     NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastpath.Fast",
    .tp_basicsize = sizeof(Fast),
    .tp_dealloc = (destructor)fast_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)fast_init,
    .tp_methods = fast_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "fastpath", NULL, -1, NULL};

PyMODINIT_FUNC PyInit_fastpath(void) {
    if (PyType_Ready(&FastSpanType) < 0 || PyType_Ready(&FastType) < 0) return NULL;
    str_ok = PyUnicode_InternFromString("ok");
    str_append = PyUnicode_InternFromString("append");
    str_wake_at = PyUnicode_InternFromString("_wake_at");
    str_wake = PyUnicode_InternFromString("_wake");
    str_queue = PyUnicode_InternFromString("_queue");
    str_kind = PyUnicode_InternFromString("kind");
    str_internal = PyUnicode_InternFromString("internal");
    empty_tuple = PyTuple_New(0);
    bits128 = PyLong_FromLong(128);
    bits64 = PyLong_FromLong(64);
    zero = PyLong_FromLong(0);
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&FastType);
    if (PyModule_AddObject(m, "Fast", (PyObject *)&FastType) < 0) {
        Py_DECREF(&FastType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
