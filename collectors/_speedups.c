/*
 * collectors._speedups: the compiled hot path of the observability pipeline.
 *
 * Four base types, each with a pure-Python twin that behaves the same (see
 * collectors/hotpath.py, which picks one at import time):
 *
 *   SpanBase       the 19 slots of app.observability.tracing.Span, and its
 *                  `with` protocol;
 *   TracerBase     TracingService.start_span_sync / start_child_span / finish
 *                  for the common cases (a span with no attributes, events or
 *                  error, no explicit parent or ids); every other call goes to
 *                  the Python implementation (`_start_span_py`, `_finish_py`);
 *   MetricsBase    MetricsCollector.increment / observe_latency: a lookup of
 *                  (metric, labels) in the facade's cache of validated label
 *                  sets, the value check, one record; a miss calls the
 *                  facade's Python `_validate`;
 *   CollectorBase  Collector.send: RecordQueue.offer's fast path (room below
 *                  the high-water mark); anything else (closed, past the
 *                  high-water mark, full) goes to the Python `_send_slow` /
 *                  `RecordQueue.offer`.
 *
 * The records built here are the same plain tuples the Python code builds
 * (collectors/records.py), and they go to the same queues, so the collector
 * threads cannot tell the two apart. Every object this code reads or writes
 * belongs to the calling thread's span or to an immutable cache entry; shared
 * state is only touched through the same atomic operations the Python code
 * uses (deque.append under the GIL, ContextVar.set/reset).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <float.h>
#include <math.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* Module state: interned names and constants (immortal for the process).   */

static PyObject *s_ok, *s_unset, *s_open, *s_spans, *s_metrics, *s_limit, *s_append,
    *s_getrandbits, *s_wake_at, *s_wake, *s_offer, *s_send_slow,
    *s_start_span_py, *s_finish_py, *s_validate, *s_counter, *s_kind, *s_remote, *s_span_id,
    *s_internal, *s_queue, *s_yield_at, *s_send, *s_costs, *s_parent, *s_root, *s_batch,
    *s_tenant_id, *s_correlation_id, *s_request_id;
static PyObject *empty_tuple, *zero, *one, *bits64, *bits128, *mask64, *float_max_int,
    *kinds;
static PyObject *time_ns_fn, *perf_counter_ns_fn; /* fallbacks off Linux */
static PyObject *deque_type, *deque_append;         /* collections.deque and its append */

/* The parts every base type here shares: a GC-aware dealloc that clears its
   references, GC_SLOTS (traverse, clear and dealloc from a list of fields), and
   the common type slots (subclassable, GC, generic new). */
#define GC_DEALLOC(prefix, Struct)                                                              \
    static void prefix##_dealloc(Struct *self) {                                               \
        PyObject_GC_UnTrack(self);                                                             \
        prefix##_clear(self);                                                                  \
        Py_TYPE(self)->tp_free((PyObject *)self);                                              \
    }

/* traverse, clear and dealloc of a type whose object references are the
   fields listed by the X-macro FIELDS. */
#define GC_VISIT_FIELD(f) Py_VISIT(self->f);
#define GC_CLEAR_FIELD(f) Py_CLEAR(self->f);
#define GC_SLOTS(prefix, Struct, FIELDS)                                                        \
    static int prefix##_traverse(Struct *self, visitproc visit, void *arg) {                   \
        FIELDS(GC_VISIT_FIELD)                                                                 \
        return 0;                                                                              \
    }                                                                                          \
    static int prefix##_clear(Struct *self) {                                                  \
        FIELDS(GC_CLEAR_FIELD)                                                                 \
        return 0;                                                                              \
    }                                                                                          \
    GC_DEALLOC(prefix, Struct)

#define GC_BASE_TYPE(prefix, Struct, pyname, doc)                                               \
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "collectors._speedups." pyname,                   \
    .tp_basicsize = sizeof(Struct), .tp_dealloc = (destructor)prefix##_dealloc,                \
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, .tp_doc = doc,  \
    .tp_traverse = (traverseproc)prefix##_traverse, .tp_clear = (inquiry)prefix##_clear,       \
    .tp_new = PyType_GenericNew

static PyObject *float_from_ns(long long ns) { return PyFloat_FromDouble((double)ns / 1e9); }

/* time.perf_counter_ns() and time.time_ns(), read the way CPython reads them. */
static int perf_ns(long long *out) {
#if defined(__linux__)
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
        *out = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        return 0;
    }
#endif
    PyObject *value = PyObject_CallNoArgs(perf_counter_ns_fn);
    if (value == NULL) return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int wall_ns(long long *out) {
#if defined(__linux__)
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0) {
        *out = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        return 0;
    }
#endif
    PyObject *value = PyObject_CallNoArgs(time_ns_fn);
    if (value == NULL) return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* ------------------------------------------------------------------------ */
/* CollectorBase: Collector.send                                            */

typedef struct {
    PyObject_HEAD
    PyObject *queue;   /* the RecordQueue (`_queue`) */
    PyObject *items;   /* its deque (`_queue._queue`), cached when `_queue` is set */
    Py_ssize_t yield_at; /* its high-water mark (`_queue._yield_at`), fixed per queue */
    char accepting;
} CollectorBase;

static PyTypeObject CollectorBaseType;

#define COLLECTOR_FIELDS(X) X(queue) X(items)

GC_SLOTS(collector, CollectorBase, COLLECTOR_FIELDS)

static PyObject *collector_get_queue(CollectorBase *self, void *closure) {
    if (self->queue == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_queue");
        return NULL;
    }
    return Py_NewRef(self->queue);
}

static int collector_set_queue(CollectorBase *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _queue");
        return -1;
    }
    PyObject *items = PyObject_GetAttr(value, s_queue);
    if (items == NULL) return -1;
    if ((PyObject *)Py_TYPE(items) != deque_type) { /* not janus's deque: no fast path */
        Py_CLEAR(items);
    }
    PyObject *yield_obj = PyObject_GetAttr(value, s_yield_at);
    if (yield_obj == NULL) {
        Py_XDECREF(items);
        return -1;
    }
    Py_ssize_t yield_at = PyLong_AsSsize_t(yield_obj);
    Py_DECREF(yield_obj);
    if (yield_at == -1 && PyErr_Occurred()) {
        Py_XDECREF(items);
        return -1;
    }
    Py_XSETREF(self->queue, Py_NewRef(value));
    Py_XSETREF(self->items, items); /* NULL: every send goes through RecordQueue.offer */
    self->yield_at = yield_at;
    return 0;
}

/* The fast path of RecordQueue.offer: 1 enqueued, 0 not taken here (the
   caller goes the slow way), -1 error. */
static int collector_offer_fast(CollectorBase *self, PyObject *record) {
    PyObject *items = self->items;
    if (!self->accepting || items == NULL) return 0;
    Py_ssize_t depth = PyObject_Length(items);
    if (depth < 0) return -1;
    if (depth >= self->yield_at) return 0; /* near full: RecordQueue.offer decides */
    PyObject *queue = self->queue;
    Py_INCREF(items);
    Py_INCREF(queue);
    int result = -1;
    PyObject *call[2] = {items, record};
    PyObject *r = PyObject_Vectorcall(deque_append, call, 2, NULL);
    if (r == NULL) goto done;
    Py_DECREF(r);
    PyObject *wake_obj = PyObject_GetAttr(queue, s_wake_at);
    if (wake_obj == NULL) goto done;
    long long wake_at = PyLong_AsLongLong(wake_obj);
    Py_DECREF(wake_obj);
    if (wake_at == -1 && PyErr_Occurred()) goto done;
    if (depth >= wake_at - 1) {
        r = PyObject_CallMethodNoArgs(queue, s_wake);
        if (r == NULL) goto done;
        Py_DECREF(r);
    }
    result = 1;
done:
    Py_DECREF(items);
    Py_DECREF(queue);
    return result;
}

/* Collector.send(record, n): the fast path, else RecordQueue.offer, else
   Collector._send_slow. Returns a new reference to True/False, or NULL. */
static PyObject *collector_send_record(CollectorBase *self, PyObject *record, PyObject *n) {
    int fast = collector_offer_fast(self, record);
    if (fast < 0) return NULL;
    if (fast) Py_RETURN_TRUE;
    if (self->accepting && self->queue != NULL) {
        PyObject *queue = Py_NewRef(self->queue);
        PyObject *taken = PyObject_CallMethodOneArg(queue, s_offer, record);
        Py_DECREF(queue);
        if (taken == NULL) return NULL;
        int ok = PyObject_IsTrue(taken);
        Py_DECREF(taken);
        if (ok < 0) return NULL;
        if (ok) Py_RETURN_TRUE;
    }
    PyObject *args[3] = {(PyObject *)self, record, n};
    return PyObject_VectorcallMethod(s_send_slow, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

/* Send one record; 0 on success (sent or dropped and counted), -1 on error. */
static int collector_send_one(PyObject *collector, PyObject *record) {
    PyObject *result;
    if (PyObject_TypeCheck(collector, &CollectorBaseType)) {
        result = collector_send_record((CollectorBase *)collector, record, one);
    } else {
        result = PyObject_CallMethodOneArg(collector, s_send, record);
    }
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

static PyObject *collector_send(CollectorBase *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames) {
    PyObject *record = NULL, *n = one;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs >= 1) record = args[0];
    if (nargs == 2) n = args[1];
    if (nargs > 2 || nargs + nkw > 2) {
        PyErr_SetString(PyExc_TypeError, "send() takes a record and an optional count n");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(key, "record") == 0 && record == NULL) {
            record = args[nargs + i];
        } else if (PyUnicode_CompareWithASCIIString(key, "n") == 0 && nargs < 2) {
            n = args[nargs + i];
        } else {
            PyErr_Format(PyExc_TypeError, "send() got an unexpected keyword argument %R", key);
            return NULL;
        }
    }
    if (record == NULL) {
        PyErr_SetString(PyExc_TypeError, "send() missing the record");
        return NULL;
    }
    return collector_send_record(self, record, n);
}

static PyMemberDef collector_members[] = {
    {"accepting", T_BOOL, offsetof(CollectorBase, accepting), 0,
     "False once closed or dead: sends are then dropped and counted."},
    {NULL},
};

static PyGetSetDef collector_getset[] = {
    {"_queue", (getter)collector_get_queue, (setter)collector_set_queue,
     "The collector's RecordQueue (its deque and high-water mark are cached when set).", NULL},
    {NULL},
};

static PyMethodDef collector_methods[] = {
    {"send", (PyCFunction)(void (*)(void))collector_send, METH_FASTCALL | METH_KEYWORDS,
     "send(record, n=1) -> bool\n--\n\n"
     "Enqueue one record (or a Batch of n); never raises. Under drop_newest this\n"
     "never blocks; under block it waits up to block_timeout for room. A record\n"
     "that cannot be enqueued is dropped and counted."},
    {NULL},
};

static PyTypeObject CollectorBaseType = {
    GC_BASE_TYPE(collector, CollectorBase, "CollectorBase",
                 "The compiled part of collectors.base.Collector: send()."),
    .tp_methods = collector_methods,
    .tp_members = collector_members,
    .tp_getset = collector_getset,
};

/* ------------------------------------------------------------------------ */
/* SpanBase: the slots of tracing.Span                                      */

typedef struct {
    PyObject_HEAD
    PyObject *perf_start, *service, *token, *attributes, *correlation_id, *end_ns, *events,
        *identity, *kind, *name, *outbox, *parent, *request_id, *sampled, *span_id, *start_ns,
        *status, *tenant_id, *trace_id;
} SpanBase;

static PyTypeObject SpanBaseType;
static PyTypeObject TracerBaseType;

#define SPAN_FIELDS(X)                                                                         \
    X(perf_start) X(service) X(token) X(attributes) X(correlation_id) X(end_ns) X(events)      \
    X(identity) X(kind) X(name) X(outbox) X(parent) X(request_id) X(sampled) X(span_id)         \
    X(start_ns) X(status) X(tenant_id) X(trace_id)

GC_SLOTS(span, SpanBase, SPAN_FIELDS)

static PyObject *finish_span(PyObject *tracer, SpanBase *span, PyObject *status, PyObject *error,
                             PyObject *latency_metric, PyObject *labels);

static PyObject *span_enter(PyObject *self, PyObject *unused) { return Py_NewRef(self); }

/* Leaving a `with` block ends a live span (an escaping exception marks it). */
static PyObject *span_exit(SpanBase *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__ takes exc_type, exc and tb");
        return NULL;
    }
    if (self->end_ns != NULL) {
        int ended = PyObject_IsTrue(self->end_ns);
        if (ended < 0) return NULL;
        if (ended) Py_RETURN_NONE;
    }
    PyObject *service = self->service;
    if (service == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "span was not started by a TracingService");
        return NULL;
    }
    PyObject *result;
    Py_INCREF(service);
    if (PyObject_TypeCheck(service, &TracerBaseType)) {
        result = finish_span(service, self, Py_None, args[1], Py_None, empty_tuple);
    } else {
        result = PyObject_CallMethod(service, "finish", "OOO", (PyObject *)self, Py_None,
                                     args[1]);
    }
    Py_DECREF(service);
    if (result == NULL) return NULL;
    Py_DECREF(result);
    Py_RETURN_NONE;
}

#define SPAN_MEMBER(f, pyname)                                                                  \
    {pyname, T_OBJECT_EX, offsetof(SpanBase, f), 0, NULL},

static PyMemberDef span_members[] = {
    SPAN_MEMBER(perf_start, "_perf_start")
    SPAN_MEMBER(service, "_service")
    SPAN_MEMBER(token, "_token")
    SPAN_MEMBER(attributes, "attributes")
    SPAN_MEMBER(correlation_id, "correlation_id")
    SPAN_MEMBER(end_ns, "end_ns")
    SPAN_MEMBER(events, "events")
    SPAN_MEMBER(identity, "identity")
    SPAN_MEMBER(kind, "kind")
    SPAN_MEMBER(name, "name")
    SPAN_MEMBER(outbox, "outbox")
    SPAN_MEMBER(parent, "parent")
    SPAN_MEMBER(request_id, "request_id")
    SPAN_MEMBER(sampled, "sampled")
    SPAN_MEMBER(span_id, "span_id")
    SPAN_MEMBER(start_ns, "start_ns")
    SPAN_MEMBER(status, "status")
    SPAN_MEMBER(tenant_id, "tenant_id")
    SPAN_MEMBER(trace_id, "trace_id")
    {NULL},
};

static PyMethodDef span_methods[] = {
    {"__enter__", (PyCFunction)span_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))span_exit, METH_FASTCALL, NULL},
    {NULL},
};

static PyTypeObject SpanBaseType = {
    GC_BASE_TYPE(span, SpanBase, "SpanBase",
                 "The slots of a span, and its `with` protocol (compiled)."),
    .tp_methods = span_methods,
    .tp_members = span_members,
};

/* ------------------------------------------------------------------------ */
/* TracerBase: TracingService's span start and end                          */

typedef struct {
    PyObject_HEAD
    PyObject *current;      /* `_current`: the ContextVar of the current span */
    PyObject *rng;          /* `_rng`: random.Random (replaced after fork) */
    PyObject *getrandbits;  /* its bound getrandbits, cached when `_rng` is set */
    PyObject *collector;    /* `_collector`: the trace actor, or None */
    PyObject *metrics;      /* `_metrics`: the metrics actor, or None */
    PyObject *sample_bound; /* `_sample_bound`: int */
    PyObject *span_type;    /* `_span_type`: tracing.Span (a SpanBase subclass) */
    PyObject *context_type; /* `_context_type`: tracing.SpanContext */
    PyObject *costs;        /* `_costs`: the cost actor, or None */
    PyObject *outbox_type;  /* `_outbox_type`: tracing.Outbox */
    PyObject *batch_type;   /* `_batch_type`: collectors.records.Batch */
} TracerBase;

#define TRACER_FIELDS(X) X(current) X(rng) X(getrandbits) X(collector) X(metrics)         \
    X(sample_bound) X(span_type) X(context_type) X(costs) X(outbox_type) X(batch_type)

GC_SLOTS(tracer, TracerBase, TRACER_FIELDS)

static int tracer_ready(TracerBase *self) {
    if (self->current == NULL || self->getrandbits == NULL || self->span_type == NULL ||
        self->context_type == NULL || self->sample_bound == NULL ||
        !PyType_Check(self->span_type) ||
        !PyType_IsSubtype((PyTypeObject *)self->span_type, &SpanBaseType)) {
        PyErr_SetString(PyExc_RuntimeError, "TracingService is not initialised");
        return 0;
    }
    return 1;
}

/* A random id of `bits` bits, never 0 (`getrandbits(bits) or 1`). */
static PyObject *random_id(TracerBase *self, PyObject *bits) {
    PyObject *getrandbits = Py_NewRef(self->getrandbits);
    PyObject *value = PyObject_CallOneArg(getrandbits, bits);
    Py_DECREF(getrandbits);
    if (value == NULL) return NULL;
    int nonzero = PyObject_IsTrue(value);
    if (nonzero < 0) {
        Py_DECREF(value);
        return NULL;
    }
    if (!nonzero) {
        Py_DECREF(value);
        return Py_NewRef(one);
    }
    return value;
}

static long long as_ll(PyObject *value, int *failed) {
    long long result = value == NULL ? -1 : PyLong_AsLongLong(value);
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "span clock slot not set");
        *failed = 1;
    } else if (result == -1 && PyErr_Occurred()) {
        *failed = 1;
    }
    return result;
}

/* The outbox to join: the parent's when it is open, else None. */
static PyObject *open_outbox(PyObject *outbox) {
    if (outbox == NULL || outbox == Py_None) return Py_NewRef(Py_None);
    PyObject *is_open = PyObject_GetAttr(outbox, s_open);
    if (is_open == NULL) return NULL;
    int open = PyObject_IsTrue(is_open);
    Py_DECREF(is_open);
    if (open < 0) return NULL;
    return Py_NewRef(open ? outbox : Py_None);
}

/* A new span: a child of `parent` (a live local span) or, with parent None, a
   root of a new trace. Made current in this context. */
static PyObject *new_span(TracerBase *self, PyObject *name, PyObject *kind, PyObject *parent) {
    PyTypeObject *type = (PyTypeObject *)self->span_type;
    SpanBase *span = (SpanBase *)type->tp_alloc(type, 0);
    if (span == NULL) return NULL;
    long long now;
    span->name = Py_NewRef(name);
    span->kind = Py_NewRef(kind);
    span->attributes = Py_NewRef(Py_None);
    span->events = Py_NewRef(Py_None);
    span->status = Py_NewRef(s_unset);
    span->end_ns = Py_NewRef(zero);
    span->service = Py_NewRef((PyObject *)self);
    span->parent = Py_NewRef(parent);
    if (parent == Py_None) {
        span->trace_id = random_id(self, bits128);
        if (span->trace_id == NULL) goto fail;
        PyObject *low = PyNumber_And(span->trace_id, mask64);
        if (low == NULL) goto fail;
        int sampled = PyObject_RichCompareBool(low, self->sample_bound, Py_LT);
        Py_DECREF(low);
        if (sampled < 0) goto fail;
        span->sampled = Py_NewRef(sampled ? Py_True : Py_False);
        span->tenant_id = Py_NewRef(Py_None);
        span->correlation_id = Py_NewRef(Py_None);
        span->request_id = Py_NewRef(Py_None);
        span->identity = Py_NewRef(empty_tuple);
        span->outbox = Py_NewRef(Py_None);
        span->span_id = random_id(self, bits64);
        if (span->span_id == NULL) goto fail;
        long long wall;
        if (wall_ns(&wall) < 0 || perf_ns(&now) < 0) goto fail;
        span->start_ns = PyLong_FromLongLong(wall);
    } else {
        SpanBase *p = (SpanBase *)parent;
        if (p->trace_id == NULL || p->sampled == NULL || p->identity == NULL) {
            PyErr_SetString(PyExc_AttributeError, "parent span is not initialised");
            goto fail;
        }
        span->trace_id = Py_NewRef(p->trace_id);
        span->sampled = Py_NewRef(p->sampled);
        span->tenant_id = Py_NewRef(p->tenant_id ? p->tenant_id : Py_None);
        span->correlation_id = Py_NewRef(p->correlation_id ? p->correlation_id : Py_None);
        span->request_id = Py_NewRef(p->request_id ? p->request_id : Py_None);
        span->identity = Py_NewRef(p->identity);
        span->outbox = open_outbox(p->outbox);
        if (span->outbox == NULL) goto fail;
        span->span_id = random_id(self, bits64);
        if (span->span_id == NULL) goto fail;
        /* One clock read: the start on the wall clock is the parent's plus the
           monotonic time since (a trace stays consistent if the wall clock steps). */
        int failed = 0;
        long long parent_start = as_ll(p->start_ns, &failed);
        long long parent_perf = failed ? 0 : as_ll(p->perf_start, &failed);
        if (failed || perf_ns(&now) < 0) goto fail;
        span->start_ns = PyLong_FromLongLong(parent_start + (now - parent_perf));
    }
    if (span->start_ns == NULL) goto fail;
    span->perf_start = PyLong_FromLongLong(now);
    if (span->perf_start == NULL) goto fail;
    span->token = PyContextVar_Set(self->current, (PyObject *)span);
    if (span->token == NULL) goto fail;
    return (PyObject *)span;
fail:
    Py_DECREF(span);
    return NULL;
}

/* TracingService.start_child_span(name, kind): the node wrapper's start. */
static PyObject *tracer_start_child(TracerBase *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "start_child_span() takes a name and a kind");
        return NULL;
    }
    if (!tracer_ready(self)) return NULL;
    PyObject *parent = NULL;
    if (PyContextVar_Get(self->current, Py_None, &parent) < 0) return NULL;
    if ((PyObject *)Py_TYPE(parent) != self->span_type) {
        Py_DECREF(parent);
        /* no local span current: the checked path, start_span_sync(name, kind=kind) */
        PyObject *kwnames = PyTuple_Pack(1, s_kind);
        if (kwnames == NULL) return NULL;
        PyObject *call[3] = {(PyObject *)self, args[0], args[1]};
        PyObject *result = PyObject_VectorcallMethod(
            s_start_span_py, call, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
        Py_DECREF(kwnames);
        return result;
    }
    PyObject *span = new_span(self, args[0], args[1], parent);
    Py_DECREF(parent);
    return span;
}

/* An identity argument the fast path takes: None or a non-empty str. */
static int plain_id(PyObject *value) {
    return value == Py_None || (PyUnicode_CheckExact(value) && PyUnicode_GET_LENGTH(value) > 0);
}

/* The flat identity tuple ("tenant_id", t, "correlation_id", c, "request_id", r)
   of the ids that are set, as tracing._identity builds it. */
static PyObject *identity_tuple(PyObject *tenant, PyObject *correlation, PyObject *request) {
    PyObject *ids[3] = {tenant, correlation, request};
    PyObject *keys[3] = {s_tenant_id, s_correlation_id, s_request_id};
    Py_ssize_t n = 0;
    for (int i = 0; i < 3; i++) n += ids[i] != Py_None;
    PyObject *flat = PyTuple_New(2 * n);
    if (flat == NULL) return NULL;
    Py_ssize_t at = 0;
    for (int i = 0; i < 3; i++) {
        if (ids[i] == Py_None) continue;
        PyTuple_SET_ITEM(flat, at++, Py_NewRef(keys[i]));
        PyTuple_SET_ITEM(flat, at++, Py_NewRef(ids[i]));
    }
    return flat;
}

/* TracingService.start_span_sync(name, *, kind=..., ...): the common calls
   here -- a name, a known kind, a local parent (given, current, or none with
   `root`), ids that are None or non-empty str, `batch` -- and every other call
   (attributes, a remote parent, anything to check or refuse) to the Python
   implementation, which checks and handles all arguments. */
static PyObject *tracer_start_span(TracerBase *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames) {
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *kind = s_internal, *parent = Py_None, *root = Py_False, *batch = Py_False;
    PyObject *tenant = Py_None, *correlation = Py_None, *request = Py_None;
    int simple = nargs == 1;
    for (Py_ssize_t i = 0; simple && i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i), *value = args[nargs + i];
        /* keyword names from a call site are interned: compare by identity */
        if (key == s_kind) kind = value;
        else if (key == s_parent) parent = value;
        else if (key == s_root) root = value;
        else if (key == s_batch) batch = value;
        else if (key == s_tenant_id) tenant = value;
        else if (key == s_correlation_id) correlation = value;
        else if (key == s_request_id) request = value;
        else simple = 0; /* attributes, a misspelt keyword, a non-interned name */
    }
    if (simple) {
        PyObject *name = args[0];
        simple = PyUnicode_CheckExact(name) && PyUnicode_GET_LENGTH(name) > 0 &&
                 PyUnicode_CheckExact(kind) && PyBool_Check(root) && PyBool_Check(batch) &&
                 plain_id(tenant) && plain_id(correlation) && plain_id(request) &&
                 (parent == Py_None || (PyObject *)Py_TYPE(parent) == self->span_type);
        if (simple) {
            int known = PySet_Contains(kinds, kind);
            if (known < 0) return NULL;
            simple = known;
        }
    }
    if (simple) {
        if (!tracer_ready(self)) return NULL;
        Py_INCREF(parent);
        if (parent == Py_None && root == Py_False) {
            Py_DECREF(parent);
            if (PyContextVar_Get(self->current, Py_None, &parent) < 0) return NULL;
            if (parent != Py_None && (PyObject *)Py_TYPE(parent) != self->span_type) {
                Py_DECREF(parent);
                simple = 0; /* a remote parent is current: the Python path */
            }
        }
    }
    if (simple) {
        PyObject *outbox = NULL;
        if (batch == Py_True) {
            if (self->outbox_type == NULL) {
                PyErr_SetString(PyExc_RuntimeError, "TracingService is not initialised");
            } else {
                outbox = PyObject_CallNoArgs(self->outbox_type);
            }
            if (outbox == NULL) {
                Py_DECREF(parent);
                return NULL;
            }
        }
        SpanBase *span = (SpanBase *)new_span(self, args[0], kind, parent);
        if (span != NULL && (tenant != Py_None || correlation != Py_None || request != Py_None)) {
            /* explicit ids; the ones not given are inherited from a local parent */
            if (tenant == Py_None) tenant = span->tenant_id;
            if (correlation == Py_None) correlation = span->correlation_id;
            if (request == Py_None) request = span->request_id;
            PyObject *identity = identity_tuple(tenant, correlation, request);
            if (identity == NULL) {
                Py_CLEAR(span);
            } else {
                Py_INCREF(tenant);
                Py_INCREF(correlation);
                Py_INCREF(request);
                Py_XSETREF(span->tenant_id, tenant);
                Py_XSETREF(span->correlation_id, correlation);
                Py_XSETREF(span->request_id, request);
                Py_XSETREF(span->identity, identity);
            }
        }
        if (span != NULL && outbox != NULL) {
            Py_XSETREF(span->outbox, outbox);
            outbox = NULL;
        }
        Py_XDECREF(outbox);
        Py_DECREF(parent);
        return (PyObject *)span;
    }
    if (PyErr_Occurred()) return NULL;
    PyObject *stack[16];
    if (nargs + nkw + 1 > 16) {
        PyErr_SetString(PyExc_TypeError, "start_span_sync() got too many arguments");
        return NULL;
    }
    stack[0] = (PyObject *)self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) stack[i + 1] = args[i];
    return PyObject_VectorcallMethod(s_start_span_py, stack,
                                     (nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
}

/* Append `item` to the list attribute `attr` of `outbox`; its new length, or -1. */
static Py_ssize_t outbox_append(PyObject *outbox, PyObject *attr, PyObject *item) {
    PyObject *list = PyObject_GetAttr(outbox, attr);
    if (list == NULL) return -1;
    Py_ssize_t length = -1;
    if (PyList_CheckExact(list)) {
        if (PyList_Append(list, item) == 0) length = PyList_GET_SIZE(list);
    } else {
        PyObject *r = PyObject_CallMethodOneArg(list, s_append, item);
        if (r != NULL) {
            Py_DECREF(r);
            length = PyObject_Length(list);
        }
    }
    Py_DECREF(list);
    return length;
}

static Py_ssize_t attr_length(PyObject *owner, PyObject *attr) {
    PyObject *value = PyObject_GetAttr(owner, attr);
    if (value == NULL) return -1;
    Py_ssize_t length = PyObject_Length(value);
    Py_DECREF(value);
    return length;
}

/* Send `records` (a list) to `actor` as send_batch does in Python: one record
   bare, several as one Batch(records=tuple) counted as len(records). */
static int send_taken(TracerBase *self, PyObject *records, PyObject *actor) {
    Py_ssize_t n = PyList_GET_SIZE(records);
    if (n == 0 || actor == NULL || actor == Py_None) return 0;
    if (n == 1) return collector_send_one(actor, PyList_GET_ITEM(records, 0));
    if (self->batch_type == NULL || !PyType_Check(self->batch_type) ||
        !PyType_IsSubtype((PyTypeObject *)self->batch_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_RuntimeError, "TracingService._batch_type is not set");
        return -1;
    }
    PyObject *inner = PyList_AsTuple(records);
    if (inner == NULL) return -1;
    /* tuple.__new__(Batch, (inner,)): the NamedTuple without its Python __new__ */
    PyObject *fields = PyTuple_Pack(1, inner);
    Py_DECREF(inner);
    if (fields == NULL) return -1;
    PyObject *args = PyTuple_Pack(1, fields);
    Py_DECREF(fields);
    if (args == NULL) return -1;
    PyObject *batch = PyTuple_Type.tp_new((PyTypeObject *)self->batch_type, args, NULL);
    Py_DECREF(args);
    if (batch == NULL) return -1;
    PyObject *count = PyLong_FromSsize_t(n);
    PyObject *result = NULL;
    if (count != NULL) {
        if (PyObject_TypeCheck(actor, &CollectorBaseType)) {
            result = collector_send_record((CollectorBase *)actor, batch, count);
        } else {
            result = PyObject_CallMethodObjArgs(actor, s_send, batch, count, NULL);
        }
        Py_DECREF(count);
    }
    Py_DECREF(batch);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* Take every item of the list attribute `attr` of `outbox` (a new list), or NULL. */
static PyObject *take_all(PyObject *outbox, PyObject *attr) {
    PyObject *list = PyObject_GetAttr(outbox, attr);
    if (list == NULL) return NULL;
    if (!PyList_Check(list)) {
        Py_DECREF(list);
        PyErr_Format(PyExc_TypeError, "Outbox.%U must be a list", attr);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(list);
    PyObject *taken = PyList_GetSlice(list, 0, n);
    /* The removed items are still referenced by `taken`: no destructor runs here. */
    if (taken != NULL && PyList_SetSlice(list, 0, n, NULL) < 0) Py_CLEAR(taken);
    Py_DECREF(list);
    return taken;
}

/* TracingService.send_outbox(outbox): enqueue everything in the outbox, one
   batch per collector, and empty it. The pure-Python twin holds `outbox.lock`
   while it takes the three lists; here the three takes run without a Python
   instruction or a destructor in between, so under the GIL they are one atomic
   step (no other sender, locked or not, can take the same records). Appends
   racing with the take land either in what is taken or in the list, for the
   next sender (see tracing.Outbox). */
static int send_outbox_impl(TracerBase *self, PyObject *outbox) {
    PyObject *spans = take_all(outbox, s_spans);
    PyObject *metrics = spans == NULL ? NULL : take_all(outbox, s_metrics);
    PyObject *costs = metrics == NULL ? NULL : take_all(outbox, s_costs);
    int result = -1;
    if (costs != NULL && send_taken(self, spans, self->collector) == 0 &&
        send_taken(self, metrics, self->metrics) == 0 &&
        send_taken(self, costs, self->costs) == 0) {
        result = 0;
    }
    Py_XDECREF(spans);
    Py_XDECREF(metrics);
    Py_XDECREF(costs);
    return result;
}

static PyObject *tracer_send_outbox(TracerBase *self, PyObject *outbox) {
    if (send_outbox_impl(self, outbox) < 0) return NULL;
    Py_RETURN_NONE;
}

/* The span record's attributes: the identity then the span's attributes,
   flat, as tracing._merge builds them. NULL with no error set when a key of
   `attributes` is also an identity key (the Python `_merge` resolves that). */
static PyObject *merged_attributes(PyObject *identity, PyObject *attributes) {
    Py_ssize_t nid = PyTuple_GET_SIZE(identity);
    for (Py_ssize_t i = 0; i < nid; i += 2) {
        int clash = PyDict_Contains(attributes, PyTuple_GET_ITEM(identity, i));
        if (clash != 0) return NULL; /* a clash, or an error (set) */
    }
    PyObject *flat = PyTuple_New(nid + 2 * PyDict_GET_SIZE(attributes));
    if (flat == NULL) return NULL;
    for (Py_ssize_t i = 0; i < nid; i++) {
        PyTuple_SET_ITEM(flat, i, Py_NewRef(PyTuple_GET_ITEM(identity, i)));
    }
    Py_ssize_t pos = 0, at = nid;
    PyObject *key, *value;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        PyTuple_SET_ITEM(flat, at++, Py_NewRef(key));
        PyTuple_SET_ITEM(flat, at++, Py_NewRef(value));
    }
    return flat;
}

/* The record's parent span id: 0 for a root. */
static PyObject *parent_span_id(PyObject *parent) {
    if (parent == NULL || parent == Py_None) return Py_NewRef(zero);
    if (PyObject_TypeCheck(parent, &SpanBaseType)) {
        PyObject *id = ((SpanBase *)parent)->span_id;
        if (id == NULL) {
            PyErr_SetString(PyExc_AttributeError, "parent span has no span_id");
            return NULL;
        }
        return Py_NewRef(id);
    }
    return PyObject_GetAttr(parent, s_span_id);
}

static PyObject *finish_plain(TracerBase *self, SpanBase *span, PyObject *status,
                              PyObject *latency_metric, PyObject *labels, PyObject *attributes);

/* TracingService.finish for a span with no events or error, whose attributes
   (if any) do not repeat an identity key; anything else goes to `_finish_py`. */
static PyObject *finish_span(PyObject *tracer, SpanBase *span, PyObject *status, PyObject *error,
                             PyObject *latency_metric, PyObject *labels) {
    TracerBase *self = (TracerBase *)tracer;
    /* The record's attributes: the identity alone, or merged with the span's
       own (a dict whose keys do not repeat an identity key). */
    PyObject *attributes = NULL;
    int plain = error == Py_None && span->identity != NULL && PyTuple_CheckExact(span->identity);
    if (plain) {
        PyObject *own = span->attributes;
        if (own == NULL || own == Py_None ||
            (PyDict_CheckExact(own) && PyDict_GET_SIZE(own) == 0)) {
            attributes = Py_NewRef(span->identity);
        } else if (PyDict_CheckExact(own)) {
            Py_INCREF(own);
            attributes = merged_attributes(span->identity, own);
            Py_DECREF(own);
            if (attributes == NULL && PyErr_Occurred()) return NULL;
        }
        plain = attributes != NULL;
    }
    if (plain && span->events != NULL && span->events != Py_None) {
        int has_events = PyObject_IsTrue(span->events);
        if (has_events < 0) {
            Py_DECREF(attributes);
            return NULL;
        }
        plain = !has_events;
    }
    if (!plain || !tracer_ready(self) || span->start_ns == NULL) {
        Py_XDECREF(attributes);
        if (PyErr_Occurred()) return NULL;
        PyObject *call[6] = {tracer, (PyObject *)span, status, error, latency_metric, labels};
        return PyObject_VectorcallMethod(s_finish_py, call, 6 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                         NULL);
    }
    PyObject *record = finish_plain(self, span, status, latency_metric, labels, attributes);
    Py_DECREF(attributes);
    return record;
}

/* finish_span's common case: no error, no events, and the record's flat
   `attributes` (borrowed) already built. */
static PyObject *finish_plain(TracerBase *self, SpanBase *span, PyObject *status,
                              PyObject *latency_metric, PyObject *labels,
                              PyObject *attributes) {
    int failed = 0;
    long long start = as_ll(span->start_ns, &failed);
    long long perf_start = failed ? 0 : as_ll(span->perf_start, &failed);
    long long now;
    if (failed || perf_ns(&now) < 0) return NULL;
    long long end = start + (now - perf_start);
    PyObject *end_obj = PyLong_FromLongLong(end);
    if (end_obj == NULL) return NULL;
    Py_XSETREF(span->end_ns, end_obj);

    PyObject *current = NULL;
    if (PyContextVar_Get(self->current, Py_None, &current) < 0) return NULL;
    int is_current = current == (PyObject *)span;
    Py_DECREF(current);
    if (is_current) {
        if (span->token == NULL || PyContextVar_Reset(self->current, span->token) < 0) {
            /* ended in another context than it started in */
            if (span->token != NULL && !PyErr_ExceptionMatches(PyExc_ValueError)) return NULL;
            PyErr_Clear();
            PyObject *token = PyContextVar_Set(self->current,
                                               span->parent ? span->parent : Py_None);
            if (token == NULL) return NULL;
            Py_DECREF(token);
        }
    }
    if (status == Py_None) {
        status = span->status ? span->status : s_unset;
        if (status == s_unset || PyUnicode_Compare(status, s_unset) == 0) status = s_ok;
        if (PyErr_Occurred()) return NULL;
    }
    Py_INCREF(status);
    Py_XSETREF(span->status, status);

    PyObject *parent = span->parent ? span->parent : Py_None;
    Py_INCREF(parent);
    PyObject *result = NULL, *record = NULL, *metric = NULL, *outbox = NULL;
    PyObject *parent_id = parent_span_id(parent);
    if (parent_id == NULL) goto done;
    int remote = 0;
    if ((PyObject *)Py_TYPE(parent) == self->context_type) {
        PyObject *flag = PyObject_GetAttr(parent, s_remote);
        if (flag == NULL) goto done;
        remote = PyObject_IsTrue(flag);
        Py_DECREF(flag);
        if (remote < 0) goto done;
    }
    if (span->trace_id == NULL || span->span_id == NULL || span->name == NULL ||
        span->kind == NULL) {
        PyErr_SetString(PyExc_AttributeError, "span is not initialised");
        goto done;
    }
    record = PyTuple_Pack(13, span->trace_id, span->span_id, parent_id, span->name, span->kind,
                          span->start_ns, span->end_ns, status, Py_None, Py_None, attributes,
                          empty_tuple, remote ? Py_True : Py_False);
    if (record == NULL) goto done;
    if (latency_metric != Py_None) {
        PyObject *seconds = float_from_ns(end - start);
        if (seconds == NULL) goto done;
        metric = PyTuple_Pack(3, latency_metric, labels, seconds);
        Py_DECREF(seconds);
        if (metric == NULL) goto done;
    }
    int sampled = span->sampled == Py_True;
    outbox = open_outbox(span->outbox);
    if (outbox == NULL) goto done;
    if (outbox != Py_None) {
        Py_ssize_t spans = 0, metrics = 0;
        if (sampled && (spans = outbox_append(outbox, s_spans, record)) < 0) goto done;
        if (metric != NULL) {
            if ((metrics = outbox_append(outbox, s_metrics, metric)) < 0) goto done;
        }
        int owner = !PyObject_TypeCheck(parent, &SpanBaseType) ||
                    ((SpanBase *)parent)->outbox != outbox;
        int send = owner;
        if (owner) {
            if (PyObject_SetAttr(outbox, s_open, Py_False) < 0) goto done;
        } else {
            PyObject *still = open_outbox(outbox);
            if (still == NULL) goto done;
            send = still == Py_None; /* closed by the root meanwhile */
            Py_DECREF(still);
            if (!send) {
                PyObject *limit_obj = PyObject_GetAttr(outbox, s_limit);
                if (limit_obj == NULL) goto done;
                Py_ssize_t limit = PyLong_AsSsize_t(limit_obj);
                Py_DECREF(limit_obj);
                if (limit == -1 && PyErr_Occurred()) goto done;
                if (!sampled && (spans = attr_length(outbox, s_spans)) < 0) goto done;
                if (metric == NULL && (metrics = attr_length(outbox, s_metrics)) < 0) goto done;
                send = spans + metrics >= limit; /* a long run */
            }
        }
        if (send && send_outbox_impl(self, outbox) < 0) goto done;
    } else { /* not batched, or ending after its root */
        if (sampled && self->collector != NULL && self->collector != Py_None &&
            collector_send_one(self->collector, record) < 0) {
            goto done;
        }
        if (metric != NULL && self->metrics != NULL && self->metrics != Py_None &&
            collector_send_one(self->metrics, metric) < 0) {
            goto done;
        }
    }
    result = Py_NewRef(record);
done:
    Py_XDECREF(outbox);
    Py_XDECREF(metric);
    Py_XDECREF(record);
    Py_XDECREF(parent_id);
    Py_DECREF(parent);
    return result;
}

static PyObject *tracer_finish(TracerBase *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    static const char *const names[] = {"span", "status", "error", "latency_metric", "labels"};
    PyObject *values[5] = {NULL, Py_None, Py_None, Py_None, empty_tuple};
    if (nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "finish() takes at most 5 arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) values[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        int found = 0;
        for (int j = 0; j < 5; j++) {
            if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0) {
                if (j < nargs) {
                    PyErr_Format(PyExc_TypeError, "finish() got multiple values for %R", key);
                    return NULL;
                }
                values[j] = args[nargs + i];
                found = 1;
                break;
            }
        }
        if (!found) {
            PyErr_Format(PyExc_TypeError, "finish() got an unexpected keyword argument %R", key);
            return NULL;
        }
    }
    if (values[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "finish() missing the span");
        return NULL;
    }
    if (!PyObject_TypeCheck(values[0], &SpanBaseType)) {
        PyObject *call[6] = {(PyObject *)self, values[0], values[1], values[2], values[3],
                             values[4]};
        return PyObject_VectorcallMethod(s_finish_py, call, 6 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                         NULL);
    }
    return finish_span((PyObject *)self, (SpanBase *)values[0], values[1], values[2], values[3],
                       values[4]);
}

static PyObject *tracer_get_rng(TracerBase *self, void *closure) {
    return Py_NewRef(self->rng ? self->rng : Py_None);
}

static int tracer_set_rng(TracerBase *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _rng");
        return -1;
    }
    PyObject *getrandbits = PyObject_GetAttr(value, s_getrandbits);
    if (getrandbits == NULL) return -1;
    Py_XSETREF(self->rng, Py_NewRef(value));
    Py_XSETREF(self->getrandbits, getrandbits);
    return 0;
}

static PyGetSetDef tracer_getset[] = {
    {"_rng", (getter)tracer_get_rng, (setter)tracer_set_rng,
     "The id generator (random.Random; replaced after fork); its getrandbits is cached.",
     NULL},
    {NULL},
};

static PyMemberDef tracer_members[] = {
    {"_current", T_OBJECT, offsetof(TracerBase, current), 0, NULL},
    {"_collector", T_OBJECT, offsetof(TracerBase, collector), 0, NULL},
    {"_metrics", T_OBJECT, offsetof(TracerBase, metrics), 0, NULL},
    {"_sample_bound", T_OBJECT, offsetof(TracerBase, sample_bound), 0, NULL},
    {"_span_type", T_OBJECT, offsetof(TracerBase, span_type), 0, NULL},
    {"_context_type", T_OBJECT, offsetof(TracerBase, context_type), 0, NULL},
    {"_costs", T_OBJECT, offsetof(TracerBase, costs), 0, NULL},
    {"_outbox_type", T_OBJECT, offsetof(TracerBase, outbox_type), 0, NULL},
    {"_batch_type", T_OBJECT, offsetof(TracerBase, batch_type), 0, NULL},
    {NULL},
};

static PyMethodDef tracer_methods[] = {
    {"start_span_sync", (PyCFunction)(void (*)(void))tracer_start_span,
     METH_FASTCALL | METH_KEYWORDS,
     "start_span_sync(name, *, kind='internal', parent=None, root=False, tenant_id=None,\n"
     "                correlation_id=None, request_id=None, attributes=None, batch=False)\n"
     "--\n\nStart a span and make it current in this context (see\n"
     "TracingService._start_span_py for the arguments, checks and errors)."},
    {"span", (PyCFunction)(void (*)(void))tracer_start_span, METH_FASTCALL | METH_KEYWORDS,
     "span(name, *, kind='internal', ...)\n--\n\n"
     "start_span_sync under the name that reads well in a `with` block."},
    {"start_child_span", (PyCFunction)(void (*)(void))tracer_start_child, METH_FASTCALL,
     "start_child_span(name, kind)\n--\n\n"
     "Start a child of the current span for trusted callers (the node wrapper)."},
    {"send_outbox", (PyCFunction)tracer_send_outbox, METH_O,
     "send_outbox(outbox)\n--\n\n"
     "Enqueue everything in a batched run's outbox (one batch per collector)\n"
     "and empty it; safe from any thread of the run."},
    {"finish", (PyCFunction)(void (*)(void))tracer_finish, METH_FASTCALL | METH_KEYWORDS,
     "finish(span, status=None, error=None, latency_metric=None, labels=())\n--\n\n"
     "End a live span for trusted callers; returns its record as a plain tuple\n"
     "(see TracingService._finish_py)."},
    {NULL},
};

static PyTypeObject TracerBaseType = {
    GC_BASE_TYPE(tracer, TracerBase, "TracerBase",
                 "The compiled part of TracingService: span start and end."),
    .tp_methods = tracer_methods,
    .tp_members = tracer_members,
    .tp_getset = tracer_getset,
};

/* ------------------------------------------------------------------------ */
/* NodeWrapper: the workflow instrumentation's wrapper of a sync node       */

/* NodeWrapper(fn, name, tracer, after, failed, labels_ok, ok_labels, metric):
   calling it runs what instrumentation.py's pure-Python `sync_node` closure
   runs -- a child span, the node, then either `after(span, name, result)` for
   an update carrying "llm_call" or the span's end with its latency under the
   tenant's ready-made ok labels (`ok_labels.get(tenant) or labels_ok(tenant)`);
   an exception goes to `failed(span, name, exc)` and is re-raised unchanged.
   The instance has a __dict__, so functools.update_wrapper gives it the node's
   __wrapped__, __name__ and signature as the closure has them. */
typedef struct {
    PyObject_HEAD
    PyObject *fn, *name, *tracer, *after, *failed, *labels_ok, *ok_labels, *metric, *dict;
    vectorcallfunc vectorcall;
} NodeWrapper;

#define NODE_FIELDS(X) X(fn) X(name) X(tracer) X(after) X(failed) X(labels_ok) X(ok_labels) \
    X(metric) X(dict)

GC_SLOTS(node, NodeWrapper, NODE_FIELDS)

static PyObject *s_llm_call, *s_node;

/* The node raised: hand the exception to `failed`, then raise it again
   unchanged (an exception from `failed` itself propagates, chained to it). */
static PyObject *node_failed(NodeWrapper *self, PyObject *span) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) PyException_SetTraceback(value, tb);
    PyObject *r = PyObject_CallFunctionObjArgs(self->failed, span, self->name, value, NULL);
    if (r == NULL) {
        PyObject *type2, *value2, *tb2;
        PyErr_Fetch(&type2, &value2, &tb2);
        PyErr_NormalizeException(&type2, &value2, &tb2);
        if (value2 != value) PyException_SetContext(value2, Py_NewRef(value));
        PyErr_Restore(type2, value2, tb2);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    Py_DECREF(r);
    PyErr_Restore(type, value, tb);
    return NULL;
}

static PyObject *node_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames) {
    NodeWrapper *self = (NodeWrapper *)callable;
    if (self->fn == NULL || self->tracer == NULL) { /* cleared; the types were checked by new */
        PyErr_SetString(PyExc_RuntimeError, "NodeWrapper is not initialised");
        return NULL;
    }
    PyObject *start[2] = {self->name, s_node};
    PyObject *span = tracer_start_child((TracerBase *)self->tracer, start, 2);
    if (span == NULL) return NULL;
    PyObject *result = PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    if (result == NULL) {
        node_failed(self, span);
        Py_DECREF(span);
        return NULL;
    }
    if (PyDict_CheckExact(result)) {
        int llm = PyDict_Contains(result, s_llm_call);
        if (llm != 0) {
            PyObject *r = llm < 0 ? NULL : PyObject_CallFunctionObjArgs(
                self->after, span, self->name, result, NULL);
            Py_DECREF(span);
            if (r == NULL) {
                Py_DECREF(result);
                return NULL;
            }
            Py_DECREF(r);
            return result;
        }
    }
    /* The common end: the span and its latency, with the tenant's ok labels. */
    SpanBase *node = (SpanBase *)span;
    PyObject *tenant = node->tenant_id ? node->tenant_id : Py_None;
    Py_INCREF(tenant);
    PyObject *labels = PyDict_GetItemWithError(self->ok_labels, tenant); /* borrowed */
    int truthy = labels == NULL ? 0 : PyObject_IsTrue(labels);
    if (truthy > 0) {
        Py_INCREF(labels);
    } else if (truthy == 0 && !PyErr_Occurred()) {
        labels = PyObject_CallOneArg(self->labels_ok, tenant);
    } else {
        labels = NULL;
    }
    Py_DECREF(tenant);
    PyObject *record = labels == NULL ? NULL : finish_span(
        self->tracer, node, Py_None, Py_None, self->metric, labels);
    Py_XDECREF(labels);
    Py_DECREF(span);
    if (record == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    Py_DECREF(record);
    return result;
}

static PyObject *node_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *fn, *name, *tracer, *after, *failed, *labels_ok, *ok_labels, *metric;
    if (!_PyArg_NoKeywords("NodeWrapper", kwargs) ||
        !PyArg_ParseTuple(args, "OUO!OOOO!U:NodeWrapper", &fn, &name, &TracerBaseType, &tracer,
                          &after, &failed, &labels_ok, &PyDict_Type, &ok_labels, &metric)) {
        return NULL;
    }
    if (!PyCallable_Check(fn) || !PyCallable_Check(after) || !PyCallable_Check(failed) ||
        !PyCallable_Check(labels_ok)) {
        PyErr_SetString(PyExc_TypeError, "fn, after, failed and labels_ok must be callable");
        return NULL;
    }
    NodeWrapper *self = (NodeWrapper *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->fn = Py_NewRef(fn);
    self->name = Py_NewRef(name);
    self->tracer = Py_NewRef(tracer);
    self->after = Py_NewRef(after);
    self->failed = Py_NewRef(failed);
    self->labels_ok = Py_NewRef(labels_ok);
    self->ok_labels = Py_NewRef(ok_labels);
    self->metric = Py_NewRef(metric);
    self->vectorcall = node_vectorcall;
    return (PyObject *)self;
}

static PyGetSetDef node_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

static PyTypeObject NodeWrapperType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "collectors._speedups.NodeWrapper",
    .tp_basicsize = sizeof(NodeWrapper),
    .tp_dealloc = (destructor)node_dealloc,
    .tp_vectorcall_offset = offsetof(NodeWrapper, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "NodeWrapper(fn, name, tracer, after, failed, labels_ok, ok_labels, metric): "
              "a sync node with its span, latency and failure capture (compiled).",
    .tp_traverse = (traverseproc)node_traverse,
    .tp_clear = (inquiry)node_clear,
    .tp_dictoffset = offsetof(NodeWrapper, dict),
    .tp_getset = node_getset,
    .tp_new = node_new,
};

/* ------------------------------------------------------------------------ */
/* MetricsBase: MetricsCollector.increment / observe_latency                */

typedef struct {
    PyObject_HEAD
    PyObject *valid_counters;   /* `_valid_counters`: (metric, labels) -> labels */
    PyObject *valid_histograms; /* `_valid_histograms` */
    PyObject *collector;        /* `_collector`: the metrics actor */
} MetricsBase;

#define METRICS_FIELDS(X) X(valid_counters) X(valid_histograms) X(collector)

GC_SLOTS(metrics, MetricsBase, METRICS_FIELDS)

static PyObject *type_name_error(const char *what, PyObject *value) {
    PyErr_Format(PyExc_TypeError, what, Py_TYPE(value)->tp_name);
    return NULL;
}

/* The value checks of increment (counter) and observe_latency, with the
   Python facade's messages. 0 if valid, -1 with an exception set. */
static int check_value(PyObject *value, int counter) {
    if (PyFloat_CheckExact(value)) {
        double d = PyFloat_AS_DOUBLE(value);
        if (d >= 0.0 && d <= DBL_MAX) return 0;
        PyObject *r = PyObject_Repr(value);
        if (r == NULL) return -1;
        PyErr_Format(PyExc_ValueError,
                     counter ? "amount must be finite and >= 0, got %U"
                             : "latency must be finite and >= 0 seconds, got %U",
                     r);
        Py_DECREF(r);
        return -1;
    }
    if (PyLong_CheckExact(value)) {
        int ok;
        if (_PyLong_Sign(value) < 0) {
            ok = 0;
        } else if (_PyLong_NumBits(value) <= 1000) {
            ok = 1;
        } else { /* an int past the float range would fail in the store's float sums */
            ok = PyObject_RichCompareBool(value, float_max_int, Py_LE);
            if (ok < 0) return -1;
        }
        if (ok) return 0;
        PyObject *r = PyObject_Repr(value);
        if (r == NULL) return -1;
        PyErr_Format(PyExc_ValueError,
                     counter ? "amount must be finite and >= 0, got %U"
                             : "latency must be finite and >= 0 seconds, got %U",
                     r);
        Py_DECREF(r);
        return -1;
    }
    type_name_error(counter ? "amount must be an int or float, got %s"
                            : "latency must be a float (seconds), got %s",
                    value);
    return -1;
}

static PyObject *record_metric(MetricsBase *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames, int counter) {
    const char *fn = counter ? "increment" : "observe_latency";
    if (nargs < (counter ? 1 : 2) || nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     counter ? "%s() takes a metric, an optional amount and labels as keywords"
                             : "%s() takes a metric, seconds and labels as keywords",
                     fn);
        return NULL;
    }
    PyObject *cache = counter ? self->valid_counters : self->valid_histograms;
    if (cache == NULL || !PyDict_Check(cache) || self->collector == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "MetricsCollector is not initialised");
        return NULL;
    }
    PyObject *metric = args[0];
    PyObject *value = nargs == 2 ? args[1] : one;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *pairs = PyTuple_New(nkw);
    if (pairs == NULL) return NULL;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *pair = PyTuple_Pack(2, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]);
        if (pair == NULL) {
            Py_DECREF(pairs);
            return NULL;
        }
        PyTuple_SET_ITEM(pairs, i, pair);
    }
    PyObject *key = PyTuple_Pack(2, metric, pairs);
    Py_DECREF(pairs);
    if (key == NULL) return NULL;
    Py_INCREF(cache);
    PyObject *known = PyDict_GetItemWithError(cache, key); /* borrowed */
    Py_XINCREF(known);
    Py_DECREF(cache);
    Py_DECREF(key);
    if (known == NULL) {
        /* not validated yet, or unhashable: the full check */
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) return NULL;
            PyErr_Clear();
        }
        PyObject *labels = PyDict_New();
        if (labels == NULL) return NULL;
        for (Py_ssize_t i = 0; i < nkw; i++) {
            if (PyDict_SetItem(labels, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                Py_DECREF(labels);
                return NULL;
            }
        }
        PyObject *kw = PyTuple_Pack(1, s_counter);
        if (kw == NULL) {
            Py_DECREF(labels);
            return NULL;
        }
        PyObject *call[5] = {(PyObject *)self, metric, value, labels,
                             counter ? Py_True : Py_False};
        known = PyObject_VectorcallMethod(s_validate, call, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                          kw);
        Py_DECREF(kw);
        Py_DECREF(labels);
        if (known == NULL) return NULL;
    }
    if (check_value(value, counter) < 0) {
        Py_DECREF(known);
        return NULL;
    }
    PyObject *record = PyTuple_Pack(3, metric, known, value); /* a plain tuple: records.py */
    Py_DECREF(known);
    if (record == NULL) return NULL;
    PyObject *collector = Py_NewRef(self->collector);
    int failed = collector_send_one(collector, record);
    Py_DECREF(collector);
    Py_DECREF(record);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

static PyObject *metrics_increment(MetricsBase *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames) {
    return record_metric(self, args, nargs, kwnames, 1);
}

static PyObject *metrics_observe(MetricsBase *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    return record_metric(self, args, nargs, kwnames, 0);
}

static PyMemberDef metrics_members[] = {
    {"_valid_counters", T_OBJECT, offsetof(MetricsBase, valid_counters), 0, NULL},
    {"_valid_histograms", T_OBJECT, offsetof(MetricsBase, valid_histograms), 0, NULL},
    {"_collector", T_OBJECT, offsetof(MetricsBase, collector), 0, NULL},
    {NULL},
};

static PyMethodDef metrics_methods[] = {
    {"increment", (PyCFunction)(void (*)(void))metrics_increment, METH_FASTCALL | METH_KEYWORDS,
     "increment(metric, amount=1, /, **labels)\n--\n\n"
     "Add amount to a counter series (see MetricsCollector.increment)."},
    {"observe_latency", (PyCFunction)(void (*)(void))metrics_observe,
     METH_FASTCALL | METH_KEYWORDS,
     "observe_latency(metric, seconds, /, **labels)\n--\n\n"
     "Observe one latency, in seconds, in a histogram (see MetricsCollector.observe_latency)."},
    {"observe", (PyCFunction)(void (*)(void))metrics_observe, METH_FASTCALL | METH_KEYWORDS,
     "observe(metric, value, /, **labels)\n--\n\n"
     "observe_latency under the general name, for histograms that are not latencies."},
    {NULL},
};

static PyTypeObject MetricsBaseType = {
    GC_BASE_TYPE(metrics, MetricsBase, "MetricsBase",
                 "The compiled part of MetricsCollector: increment and observe_latency."),
    .tp_methods = metrics_methods,
    .tp_members = metrics_members,
};

/* ------------------------------------------------------------------------ */
/* The metrics store's series (collectors/metrics.py) and its record applier */

typedef struct {
    PyObject_HEAD
    PyObject *value; /* int or float: a counter's running sum */
} CounterCell;

static int counter_init(CounterCell *self, PyObject *args, PyObject *kwargs) {
    if (!_PyArg_NoKeywords("CounterCell", kwargs) ||
        !PyArg_UnpackTuple(args, "CounterCell", 0, 0)) {
        return -1;
    }
    Py_XSETREF(self->value, Py_NewRef(zero));
    return 0;
}

#define COUNTER_FIELDS(X) X(value)

GC_SLOTS(counter, CounterCell, COUNTER_FIELDS)

/* value += amount; 0 or -1 (unchanged) */
static int counter_add_value(CounterCell *self, PyObject *amount) {
    PyObject *sum = PyNumber_Add(self->value ? self->value : zero, amount);
    if (sum == NULL) return -1;
    Py_XSETREF(self->value, sum);
    return 0;
}

static PyObject *counter_add(CounterCell *self, PyObject *amount) {
    if (counter_add_value(self, amount) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMemberDef counter_members[] = {
    {"value", T_OBJECT_EX, offsetof(CounterCell, value), 0, "The counter's running sum."},
    {NULL},
};

static PyMethodDef counter_methods[] = {
    {"add", (PyCFunction)counter_add, METH_O, "add(amount)\n--\n\nAdd to the running sum."},
    {NULL},
};

static PyTypeObject CounterCellType = {
    GC_BASE_TYPE(counter, CounterCell, "CounterCell",
                 "One counter series of the metrics store (compiled)."),
    .tp_methods = counter_methods,
    .tp_members = counter_members,
    .tp_init = (initproc)counter_init,
};

/* The quantile sketch of a HistogramCell (the DDSketch mapping of
   collectors/_sketch.py, with the same index for every value) keeps its bins
   in a C array of counts over a contiguous index range, so an observation is
   one log, one bounds check and one increment (a dict of Python ints cost a
   PyLong, a lookup, an addition and a store per observation).

   The array starts with SKETCH_FIRST_BINS bins around the first index and
   grows to cover a new one (at least doubling, keeping every bin it has), but
   never spans more than `sketch_cap` indices: the bins of a value ratio of
   SKETCH_SPAN_RATIO (a nanosecond to 30 years) at the cell's accuracy, at
   least SKETCH_MIN_CAP (a ratio of ~4e35 at the default 1%: 32 KiB of counts)
   and at most SKETCH_MAX_CAP (256 KiB; an accuracy finer than ~0.06%
   covers less). An index the array cannot cover without exceeding its cap (a
   series holding both 1e-300 and 1e300) is counted in a dict, `far_bins`,
   exactly as the Python sketch counts every index: the old, slower path (and
   apply_all declines a batch holding one). No bin is ever merged or dropped,
   so the quantiles are exactly those of the Python sketch, and a series'
   memory stays bounded by the array plus one dict entry per distinct far
   index (the index range of all finite doubles at 1% is ~73,000). The
   array's range only ever widens, so an index that once went to `far_bins`
   never fits the array later (covering it would exceed the cap still): the
   two hold disjoint indices. Readers (scrapes, snapshots) get their union as
   `_bins`, a new {index: count} dict, which QuantileSketch.quantile reads. */
#define SKETCH_FIRST_BINS 64
#define SKETCH_MIN_CAP 4096
#define SKETCH_MAX_CAP 32768
#define SKETCH_SPAN_RATIO 1e18
/* An index past this magnitude (reached only at an absurdly fine accuracy) is
   kept as a Python int, in `far_bins`: below it a double is an exact C integer. */
#define SKETCH_INDEX_LIMIT 4503599627370496.0 /* 2**52 */

typedef struct {
    PyObject_HEAD
    PyObject *bounds;      /* tuple of float upper bounds (without +Inf) */
    PyObject *far_bins;    /* dict: sketch index -> count, for indices outside the array; or NULL */
    double *bound_values;  /* the bounds as C doubles */
    long long *counts;     /* per bucket, the last one +Inf */
    long long *sketch;     /* sketch counts of indices sketch_lo .. sketch_lo + sketch_len - 1 */
    long long sketch_lo;
    Py_ssize_t sketch_len; /* 0 until the first value > 0 */
    Py_ssize_t sketch_cap; /* the most bins the array may span */
    Py_ssize_t nbounds;
    double sum, min, max, gamma, inv_log_gamma;
    Py_ssize_t count, zeros;
} HistogramCell;

static int histogram_init(HistogramCell *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"bounds", "relative_accuracy", NULL};
    PyObject *bounds;
    double accuracy = 0.01;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|d:HistogramCell", names, &bounds,
                                     &accuracy)) {
        return -1;
    }
    if (!(accuracy > 0.0 && accuracy < 1.0)) {
        PyErr_SetString(PyExc_ValueError, "relative_accuracy must be in (0, 1)");
        return -1;
    }
    PyObject *tuple = PySequence_Tuple(bounds);
    if (tuple == NULL) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    double *values = PyMem_New(double, n > 0 ? n : 1);
    long long *counts = PyMem_New(long long, n + 1);
    if (values == NULL || counts == NULL) {
        PyMem_Free(values);
        PyMem_Free(counts);
        Py_DECREF(tuple);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        values[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(tuple, i));
        if (values[i] == -1.0 && PyErr_Occurred()) {
            PyMem_Free(values);
            PyMem_Free(counts);
            Py_DECREF(tuple);
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i <= n; i++) counts[i] = 0;
    PyMem_Free(self->bound_values);
    PyMem_Free(self->counts);
    PyMem_Free(self->sketch);
    self->bound_values = values;
    self->counts = counts;
    self->nbounds = n;
    self->sketch = NULL;
    self->sketch_lo = 0;
    self->sketch_len = 0;
    Py_XSETREF(self->bounds, tuple);
    Py_CLEAR(self->far_bins);
    self->sum = 0.0;
    self->count = 0;
    self->zeros = 0;
    self->min = Py_HUGE_VAL;
    self->max = -Py_HUGE_VAL;
    self->gamma = (1.0 + accuracy) / (1.0 - accuracy);
    self->inv_log_gamma = 1.0 / log(self->gamma);
    double cap = ceil(log(SKETCH_SPAN_RATIO) * self->inv_log_gamma); /* NaN/inf: the max */
    self->sketch_cap = cap >= SKETCH_MIN_CAP && cap <= SKETCH_MAX_CAP ? (Py_ssize_t)cap
                       : cap < SKETCH_MIN_CAP                         ? SKETCH_MIN_CAP
                                                                      : SKETCH_MAX_CAP;
    return 0;
}

static int histogram_traverse(HistogramCell *self, visitproc visit, void *arg) {
    Py_VISIT(self->bounds);
    Py_VISIT(self->far_bins);
    return 0;
}

static int histogram_clear(HistogramCell *self) {
    Py_CLEAR(self->bounds);
    Py_CLEAR(self->far_bins);
    return 0;
}

static void histogram_dealloc(HistogramCell *self) {
    PyObject_GC_UnTrack(self);
    histogram_clear(self);
    PyMem_Free(self->bound_values);
    PyMem_Free(self->counts);
    PyMem_Free(self->sketch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The sketch index of a value > 0, ceil(log(value) * inv_log_gamma) as
   collectors/_sketch.py computes it. 1 with `*index` set when it is an exact
   C integer of sane size (any finite value at any usual accuracy), else 0
   (an infinite or NaN index, or a huge one): `*raw` has it as a double. */
static int sketch_index(HistogramCell *self, double value, double *raw, long long *index) {
    double i = ceil(log(value) * self->inv_log_gamma);
    *raw = i;
    if (!(i >= -SKETCH_INDEX_LIMIT && i <= SKETCH_INDEX_LIMIT)) return 0;
    *index = (long long)i;
    return 1;
}

/* sketch_reserve for an index outside the array: a new, wider array. */
static int sketch_grow(HistogramCell *self, long long index) {
    long long lo = self->sketch_lo, len = self->sketch_len;
    long long need_lo = index, need_hi = index; /* the range the array must cover */
    if (len > 0) {
        if (lo < need_lo) need_lo = lo;
        if (lo + len - 1 > need_hi) need_hi = lo + len - 1;
    }
    long long cap = self->sketch_cap;
    if (need_hi - need_lo >= cap) return 0;
    long long need = need_hi - need_lo + 1;
    long long grown = len * 2 > SKETCH_FIRST_BINS ? len * 2 : SKETCH_FIRST_BINS;
    if (grown < need) grown = need;
    if (grown > cap) grown = cap;
    /* Grow toward the new index, keeping the old range: below it, the top stays. */
    long long grown_lo = len == 0 ? index - grown / 2 : index < lo ? need_hi - grown + 1 : lo;
    long long *sketch = PyMem_Calloc((size_t)grown, sizeof(long long));
    if (sketch == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (len > 0) memcpy(sketch + (lo - grown_lo), self->sketch, (size_t)len * sizeof(long long));
    PyMem_Free(self->sketch);
    self->sketch = sketch;
    self->sketch_lo = grown_lo;
    self->sketch_len = (Py_ssize_t)grown;
    return 1;
}

/* Make `index` a slot of the sketch array, growing the array if its span
   allows. 1: it is one; 0: covering it would exceed `sketch_cap` (it belongs
   in `far_bins`); -1: out of memory. Nothing visible changes (a grown
   array only adds empty bins), so apply_all may reserve before it decides. */
static inline int sketch_reserve(HistogramCell *self, long long index) {
    if (index >= self->sketch_lo && index - self->sketch_lo < self->sketch_len) return 1;
    return sketch_grow(self, index);
}

/* Count one index in `far_bins` (a dict, as the Python sketch keeps every
   bin). 0, or -1 with nothing changed: an infinite or NaN index is refused by
   PyLong_FromDouble with the error math.ceil gives in collectors/_sketch.py. */
static int sketch_count_far(HistogramCell *self, double raw) {
    PyObject *index = PyLong_FromDouble(raw);
    if (index == NULL) return -1;
    if (self->far_bins == NULL && (self->far_bins = PyDict_New()) == NULL) {
        Py_DECREF(index);
        return -1;
    }
    PyObject *seen = PyDict_GetItemWithError(self->far_bins, index); /* borrowed */
    PyObject *updated = NULL;
    if (seen != NULL) {
        updated = PyNumber_Add(seen, one);
    } else if (!PyErr_Occurred()) {
        updated = Py_NewRef(one);
    }
    int failed = updated == NULL || PyDict_SetItem(self->far_bins, index, updated) < 0;
    Py_XDECREF(updated);
    Py_DECREF(index);
    return failed ? -1 : 0;
}

/* The Prometheus bucket, sum, count, min and max of one observation. Cannot fail. */
static void histogram_tally(HistogramCell *self, double value) {
    Py_ssize_t lo = 0, hi = self->nbounds; /* bisect_left(bounds, value) */
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (self->bound_values[mid] < value) lo = mid + 1;
        else hi = mid;
    }
    self->counts[lo]++;
    self->sum += value;
    self->count++;
    if (value < self->min) self->min = value;
    if (value > self->max) self->max = value;
}

/* One observation (validated, finite, >= 0): its bucket, the sum, and the
   quantile sketch (collectors/_sketch.py). 0, or -1 with nothing changed. */
static int histogram_observe(HistogramCell *self, double value) {
    if (self->counts == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "HistogramCell is not initialised");
        return -1;
    }
    if (value > 0.0) { /* the sketch bin first: the one step that can fail */
        double raw;
        long long index;
        int in_array = sketch_index(self, value, &raw, &index) ? sketch_reserve(self, index) : 0;
        if (in_array < 0) return -1;
        if (in_array) {
            self->sketch[index - self->sketch_lo]++;
        } else if (sketch_count_far(self, raw) < 0) {
            return -1;
        }
    } else {
        self->zeros++; /* zero (and anything not > 0 that gets here) */
    }
    histogram_tally(self, value);
    return 0;
}

/* An observation's value as a double: int or float only (else -2, no error). */
static int observed_value(PyObject *value, double *out) {
    if (PyFloat_CheckExact(value)) {
        *out = PyFloat_AS_DOUBLE(value);
        return 0;
    }
    if (PyLong_CheckExact(value)) {
        *out = PyLong_AsDouble(value);
        return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
    }
    return -2;
}

static PyObject *histogram_add(HistogramCell *self, PyObject *value) {
    double d;
    int kind = observed_value(value, &d);
    if (kind == -1) return NULL;
    if (kind == -2) {
        PyErr_Format(PyExc_TypeError, "an observation must be an int or float, got %s",
                     Py_TYPE(value)->tp_name);
        return NULL;
    }
    if (histogram_observe(self, d) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *histogram_counts(HistogramCell *self, void *closure) {
    if (self->counts == NULL) return PyList_New(0);
    PyObject *list = PyList_New(self->nbounds + 1);
    if (list == NULL) return NULL;
    for (Py_ssize_t i = 0; i <= self->nbounds; i++) {
        PyObject *n = PyLong_FromLongLong(self->counts[i]);
        if (n == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, n);
    }
    return list;
}

static PyObject *histogram_count(HistogramCell *self, void *closure) {
    return PyLong_FromSsize_t(self->count);
}

/* `_bins`: the sketch's non-zero bins as a new {index: count} dict, the
   array's and `far_bins` (disjoint, see above). Built on each read: only
   QuantileSketch.quantile reads it, once per quantile. */
static PyObject *histogram_bins(HistogramCell *self, void *closure) {
    PyObject *bins = self->far_bins != NULL ? PyDict_Copy(self->far_bins) : PyDict_New();
    if (bins == NULL) return NULL;
    for (Py_ssize_t i = 0; i < self->sketch_len; i++) {
        if (self->sketch[i] == 0) continue;
        PyObject *index = PyLong_FromLongLong(self->sketch_lo + i);
        PyObject *n = index != NULL ? PyLong_FromLongLong(self->sketch[i]) : NULL;
        int failed = n == NULL || PyDict_SetItem(bins, index, n) < 0;
        Py_XDECREF(index);
        Py_XDECREF(n);
        if (failed) {
            Py_DECREF(bins);
            return NULL;
        }
    }
    return bins;
}

/* `_bin_array`: (first index, length, most length) of the sketch array, for tests. */
static PyObject *histogram_bin_array(HistogramCell *self, void *closure) {
    return Py_BuildValue("(Lnn)", self->sketch_lo, self->sketch_len, self->sketch_cap);
}

static PyMemberDef histogram_members[] = {
    {"bounds", T_OBJECT, offsetof(HistogramCell, bounds), READONLY, "Bucket upper bounds."},
    {"sum", T_DOUBLE, offsetof(HistogramCell, sum), READONLY, "Sum of the observations."},
    {"_count", T_PYSSIZET, offsetof(HistogramCell, count), READONLY, NULL},
    {"_min", T_DOUBLE, offsetof(HistogramCell, min), READONLY, NULL},
    {"_max", T_DOUBLE, offsetof(HistogramCell, max), READONLY, NULL},
    {"_zero", T_PYSSIZET, offsetof(HistogramCell, zeros), READONLY, NULL},
    {"_gamma", T_DOUBLE, offsetof(HistogramCell, gamma), READONLY, NULL},
    {"_inv_log_gamma", T_DOUBLE, offsetof(HistogramCell, inv_log_gamma), READONLY, NULL},
    {NULL},
};

static PyGetSetDef histogram_getset[] = {
    {"counts", (getter)histogram_counts, NULL, "Per-bucket counts (a new list; +Inf last).",
     NULL},
    {"count", (getter)histogram_count, NULL, "Values added so far.", NULL},
    {"_bins", (getter)histogram_bins, NULL,
     "The quantile sketch's non-zero bins, {index: count} (a new dict).", NULL},
    {"_bin_array", (getter)histogram_bin_array, NULL,
     "(first index, length, most length) of the sketch's bin array.", NULL},
    {NULL},
};

static PyMethodDef histogram_methods[] = {
    {"add", (PyCFunction)histogram_add, METH_O,
     "add(value)\n--\n\nCount one non-negative finite value (validated by the facade)."},
    {NULL},
};

static PyTypeObject HistogramCellType = {
    GC_BASE_TYPE(histogram, HistogramCell, "HistogramCell",
                 "One histogram series of the metrics store: buckets, sum and quantile "
                 "sketch (compiled)."),
    .tp_methods = histogram_methods,
    .tp_members = histogram_members,
    .tp_getset = histogram_getset,
    .tp_init = (initproc)histogram_init,
};

/* MetricsApplier(by_key, fallback): applies one (metric, labels, value) record
   to the series cached in `by_key`; anything else (a series not resolved yet,
   a malformed record) is handed to `fallback(record)`, the Python apply.
   apply_all(records) applies a whole batch, or nothing.

   The identity cache. Looking a series up in `by_key` hashes the key
   (metric, labels), and CPython 3.11 does not cache a tuple's hash, so every
   record re-hashed its nested label tuple (~740 instructions). Producers send
   the same metric string and the same labels tuple again and again (the
   facade's cache of validated label sets, the tracer's labels), so a small
   two-way set-associative table keyed by the two pointers answers most
   lookups with a few compares. A miss looks `by_key` up and puts the entry in
   the first way of its set, moving the entry there to the second way and
   evicting that one's (a collision costs a dict lookup, never a wrong
   answer). It is safe:
   - A slot holds strong references to the metric, the labels and the series:
     neither address can be freed and reused by another object while cached.
   - A slot is filled only for an exact str metric and labels that are an exact
     tuple of exact tuples of exact str. Their equality and hash depend on
     their immutable content only, so looking the same two objects up in
     `by_key` again would find the same entry, for as long as it is there.
   - `by_key` only grows while its store lives. MetricsStoreCollector._resolve
     adds a key after a miss; nothing replaces or removes one (a label set
     past the cardinality cap is not put in `by_key` at all, so its records
     never reach the cache). A store is replaced only by Collector._init_runtime
     (the constructor, and after_fork_in_child, with no thread running), and
     each collector thread builds its own applier for the store of the moment
     (Collector._run calls _record_applier when it starts), so a new store
     always comes with an empty cache. Code that ever removes or replaces
     entries of `by_key` must call clear_cache().
   - Only the collector thread calls the applier (under the GIL). */
#define APPLIER_CACHE_SET_BITS 11
#define APPLIER_CACHE_SLOTS (2 << APPLIER_CACHE_SET_BITS) /* two ways per set */

/* What a series is, looked up once per cache fill (the store's series types
   are subclasses: a type check is a walk of the MRO). */
enum { SERIES_OTHER, SERIES_COUNTER, SERIES_HISTOGRAM };

static int series_kind(PyObject *series) {
    if (PyObject_TypeCheck(series, &CounterCellType)) return SERIES_COUNTER;
    if (PyObject_TypeCheck(series, &HistogramCellType)) return SERIES_HISTOGRAM;
    return SERIES_OTHER;
}

typedef struct {
    PyObject *metric, *labels, *series; /* strong references, or all NULL */
    int kind;                           /* series_kind(series) */
} CacheSlot;

typedef struct {
    PyObject_HEAD
    PyObject *by_key;
    PyObject *fallback;
    vectorcallfunc vectorcall;
    CacheSlot *cache; /* APPLIER_CACHE_SLOTS slots */
} MetricsApplier;

static int applier_traverse(MetricsApplier *self, visitproc visit, void *arg) {
    Py_VISIT(self->by_key);
    Py_VISIT(self->fallback);
    if (self->cache != NULL) {
        for (Py_ssize_t i = 0; i < APPLIER_CACHE_SLOTS; i++) {
            Py_VISIT(self->cache[i].metric);
            Py_VISIT(self->cache[i].labels);
            Py_VISIT(self->cache[i].series);
        }
    }
    return 0;
}

static void applier_forget(MetricsApplier *self) {
    if (self->cache == NULL) return;
    for (Py_ssize_t i = 0; i < APPLIER_CACHE_SLOTS; i++) {
        CacheSlot *slot = &self->cache[i];
        Py_CLEAR(slot->metric);
        Py_CLEAR(slot->labels);
        Py_CLEAR(slot->series);
    }
}

static int applier_clear(MetricsApplier *self) {
    Py_CLEAR(self->by_key);
    Py_CLEAR(self->fallback);
    applier_forget(self);
    return 0;
}

static void applier_dealloc(MetricsApplier *self) {
    PyObject_GC_UnTrack(self);
    applier_clear(self);
    PyMem_Free(self->cache);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The set (two slots) of (metric, labels): the two addresses mixed
   (Fibonacci hashing, the top bits of the product). Objects are 16-byte
   aligned: the low bits carry nothing. */
static inline CacheSlot *applier_set(MetricsApplier *self, PyObject *metric, PyObject *labels) {
    uint64_t h = ((uint64_t)(uintptr_t)metric >> 4) * 0x9E3779B97F4A7C15ULL;
    h = (h ^ ((uint64_t)(uintptr_t)labels >> 4)) * 0xC2B2AE3D27D4EB4FULL;
    return &self->cache[2 * (h >> (64 - APPLIER_CACHE_SET_BITS))];
}

/* Whether (metric, labels) may be cached by identity: a str and a tuple of
   tuples of str (exact types), whose equality and hash are their content's. */
static int cacheable_key(PyObject *metric, PyObject *labels) {
    if (!PyUnicode_CheckExact(metric) || !PyTuple_CheckExact(labels)) return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(labels); i++) {
        PyObject *pair = PyTuple_GET_ITEM(labels, i);
        if (!PyTuple_CheckExact(pair)) return 0;
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(pair); j++) {
            if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, j))) return 0;
        }
    }
    return 1;
}

/* applier_lookup past a cache miss: `by_key`, then the set is filled. */
static int applier_lookup_dict(MetricsApplier *self, CacheSlot *set, PyObject *metric,
                               PyObject *labels, PyObject **series, int *kind) {
    PyObject *key = PyTuple_Pack(2, metric, labels);
    if (key == NULL) return -1;
    PyObject *found = PyDict_GetItemWithError(self->by_key, key); /* borrowed */
    Py_DECREF(key);
    if (found == NULL) {
        if (!PyErr_Occurred()) return 0;
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) return -1;
        PyErr_Clear(); /* unhashable */
        return 0;
    }
    *series = found;
    *kind = series_kind(found);
    if (cacheable_key(metric, labels)) {
        /* The first way's entry moves to the second, the new one takes the
           first, and the evicted one is released last: its release cannot
           touch `found`, which `by_key` and the set now hold. */
        CacheSlot evicted = set[1];
        set[1] = set[0];
        set[0].metric = Py_NewRef(metric);
        set[0].labels = Py_NewRef(labels);
        set[0].series = Py_NewRef(found);
        set[0].kind = *kind;
        Py_XDECREF(evicted.metric);
        Py_XDECREF(evicted.labels);
        Py_XDECREF(evicted.series);
    }
    return 1;
}

/* The series of (metric, labels): 1 with `*series` borrowed (from the cache
   or `by_key`, which keep it alive until the caller calls out) and `*kind`
   its series_kind, 0 when `by_key` has none (or the key is unhashable: the
   Python apply reports it), -1 on error. */
static inline int applier_lookup(MetricsApplier *self, PyObject *metric, PyObject *labels,
                                 PyObject **series, int *kind) {
    CacheSlot *set = applier_set(self, metric, labels);
    for (int way = 0; way < 2; way++) {
        if (set[way].metric == metric && set[way].labels == labels) {
            *series = set[way].series;
            *kind = set[way].kind;
            return 1;
        }
    }
    return applier_lookup_dict(self, set, metric, labels, series, kind);
}

static int applier_ready(MetricsApplier *self) {
    if (self->by_key != NULL && self->fallback != NULL && self->cache != NULL) return 1;
    PyErr_SetString(PyExc_RuntimeError, "MetricsApplier is not initialised");
    return 0;
}

static PyObject *applier_apply(MetricsApplier *self, PyObject *record) {
    if (!applier_ready(self)) return NULL;
    if (PyTuple_CheckExact(record) && PyTuple_GET_SIZE(record) == 3) {
        PyObject *series;
        int kind;
        int found = applier_lookup(self, PyTuple_GET_ITEM(record, 0),
                                   PyTuple_GET_ITEM(record, 1), &series, &kind);
        if (found < 0) return NULL;
        PyObject *value = PyTuple_GET_ITEM(record, 2);
        if (found) {
            if (kind == SERIES_COUNTER) {
                Py_INCREF(series);
                int failed = counter_add_value((CounterCell *)series, value);
                Py_DECREF(series);
                if (failed) return NULL;
                Py_RETURN_NONE;
            }
            double d;
            int read = kind == SERIES_HISTOGRAM ? observed_value(value, &d) : -2;
            if (read == -1) return NULL;
            if (read == 0) {
                Py_INCREF(series);
                int failed = histogram_observe((HistogramCell *)series, d);
                Py_DECREF(series);
                if (failed) return NULL;
                Py_RETURN_NONE;
            }
        }
    }
    PyObject *fallback = Py_NewRef(self->fallback);
    PyObject *result = PyObject_CallOneArg(fallback, record);
    Py_DECREF(fallback);
    return result;
}

static PyObject *applier_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                    PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "a MetricsApplier takes one record");
        return NULL;
    }
    return applier_apply((MetricsApplier *)callable, args[0]);
}

/* One record of a batch, resolved and checked by apply_all's first pass. */
typedef struct {
    PyObject *series; /* a strong reference */
    PyObject *sum;    /* a counter's value once this record is added (strong); NULL: a histogram */
    double value;     /* a histogram's observation */
    long long index;  /* its slot in the sketch array (reserved), when value > 0 */
} Prepared;

#define APPLY_ALL_ON_STACK 64 /* records; slots of the pending table: twice that */

/* The counters' running sums within one batch: the slot of a series (hashed
   by address) in a table of 1 + the index of its last Prepared entry (0: no
   entry yet). Open addressing, never more than half full. */
static Py_ssize_t *pending_slot(Py_ssize_t *table, size_t mask, const Prepared *prepared,
                                PyObject *series) {
    uint64_t h = ((uint64_t)(uintptr_t)series >> 4) * 0x9E3779B97F4A7C15ULL;
    size_t i = (size_t)(h >> 32) & mask;
    while (table[i] != 0 && prepared[table[i] - 1].series != series) i = (i + 1) & mask;
    return &table[i];
}

/* apply_all(records) -> bool: Collector._apply_all for the metrics store.

   The first pass resolves and checks every record, exactly as the one-record
   path above would take it without calling the Python apply: an exact
   (metric, labels, value) tuple whose series `by_key` has; for a counter an
   exact int or float added to an exact int or float, computed here (in
   order, so float sums round as they would one by one); for a histogram an
   int or float as observed_value reads it whose sketch index is a slot of
   the array (reserved here: growing the array changes nothing visible). Any
   other record (a new series, a malformed record, a value of another type,
   a sum that fails, an infinite value, a far sketch index, a failed
   allocation) declines the whole batch: False, nothing applied, no error
   (the loop then applies the records one by one and counts those that
   fail). The second pass applies them all and cannot fail: it only stores
   the computed sums and increments counts. */
static PyObject *applier_apply_all(MetricsApplier *self, PyObject *records) {
    if (self->by_key == NULL || self->cache == NULL || !PyTuple_CheckExact(records)) {
        Py_RETURN_FALSE; /* the loop applies the records (and reports what fails) */
    }
    Py_ssize_t n = PyTuple_GET_SIZE(records);
    size_t slots = 8;
    while (slots < (size_t)n * 2) slots <<= 1;
    Prepared on_stack[APPLY_ALL_ON_STACK];
    Py_ssize_t pending_on_stack[2 * APPLY_ALL_ON_STACK];
    Prepared *prepared = on_stack;
    Py_ssize_t *pending = pending_on_stack;
    if (n > APPLY_ALL_ON_STACK) {
        if ((size_t)n > PY_SSIZE_T_MAX / 4 / sizeof(Prepared)) Py_RETURN_FALSE;
        prepared = PyMem_New(Prepared, n);
        pending = PyMem_New(Py_ssize_t, slots);
        if (prepared == NULL || pending == NULL) {
            PyMem_Free(prepared);
            PyMem_Free(pending);
            Py_RETURN_FALSE;
        }
    }
    memset(pending, 0, slots * sizeof(Py_ssize_t));

    Py_ssize_t ready = 0; /* entries prepared (holding references) */
    for (; ready < n; ready++) {
        PyObject *record = PyTuple_GET_ITEM(records, ready);
        if (!PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) != 3) break;
        PyObject *series;
        int kind;
        if (applier_lookup(self, PyTuple_GET_ITEM(record, 0), PyTuple_GET_ITEM(record, 1),
                           &series, &kind) != 1) {
            break; /* not resolved yet (the Python apply resolves it), or an error */
        }
        PyObject *value = PyTuple_GET_ITEM(record, 2);
        Prepared *entry = &prepared[ready];
        if (kind == SERIES_COUNTER) {
            if (!PyLong_CheckExact(value) && !PyFloat_CheckExact(value)) break;
            Py_ssize_t *last = pending_slot(pending, slots - 1, prepared, series);
            PyObject *before = *last != 0 ? prepared[*last - 1].sum
                                          : ((CounterCell *)series)->value;
            if (before == NULL) before = zero; /* as counter_add_value */
            if (!PyLong_CheckExact(before) && !PyFloat_CheckExact(before)) break;
            PyObject *sum = PyNumber_Add(before, value); /* int/float: runs no Python code */
            if (sum == NULL) break;
            *last = ready + 1;
            entry->series = Py_NewRef(series);
            entry->sum = sum;
        } else if (kind == SERIES_HISTOGRAM) {
            HistogramCell *cell = (HistogramCell *)series;
            double d;
            if (cell->counts == NULL || observed_value(value, &d) != 0) break;
            if (d > 0.0) { /* as histogram_observe: anything else counts as a zero */
                double raw;
                if (!sketch_index(cell, d, &raw, &entry->index) ||
                    sketch_reserve(cell, entry->index) != 1) {
                    break;
                }
            }
            entry->series = Py_NewRef(series);
            entry->sum = NULL;
            entry->value = d;
        } else {
            break;
        }
    }

    int complete = ready == n;
    if (complete) {
        for (Py_ssize_t i = 0; i < n; i++) {
            Prepared *entry = &prepared[i];
            if (entry->sum != NULL) {
                /* the old value is an int or float: releasing it runs no code */
                Py_XSETREF(((CounterCell *)entry->series)->value, entry->sum);
                entry->sum = NULL;
                continue;
            }
            HistogramCell *cell = (HistogramCell *)entry->series;
            if (entry->value > 0.0) {
                cell->sketch[entry->index - cell->sketch_lo]++; /* reserved above */
            } else {
                cell->zeros++;
            }
            histogram_tally(cell, entry->value);
        }
    } else {
        /* Whatever failed fails again in the loop, which counts it. */
        PyErr_Clear();
    }
    for (Py_ssize_t i = 0; i < ready; i++) {
        Py_XDECREF(prepared[i].sum);
        Py_DECREF(prepared[i].series);
    }
    if (prepared != on_stack) {
        PyMem_Free(prepared);
        PyMem_Free(pending);
    }
    return PyBool_FromLong(complete);
}

static PyObject *applier_clear_cache(MetricsApplier *self, PyObject *unused) {
    applier_forget(self);
    Py_RETURN_NONE;
}

static PyMethodDef applier_methods[] = {
    {"apply_all", (PyCFunction)applier_apply_all, METH_O,
     "apply_all(records)\n--\n\n"
     "Apply every record of a batch and return True, or apply none and return False."},
    {"clear_cache", (PyCFunction)applier_clear_cache, METH_NOARGS,
     "clear_cache()\n--\n\n"
     "Forget the cached series (needed only if entries of by_key are removed)."},
    {NULL},
};

static PyObject *applier_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *by_key, *fallback;
    if (!_PyArg_NoKeywords("MetricsApplier", kwargs) ||
        !PyArg_ParseTuple(args, "O!O:MetricsApplier", &PyDict_Type, &by_key, &fallback)) {
        return NULL;
    }
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return NULL;
    }
    CacheSlot *cache = PyMem_Calloc(APPLIER_CACHE_SLOTS, sizeof(CacheSlot));
    if (cache == NULL) return PyErr_NoMemory();
    MetricsApplier *self = (MetricsApplier *)type->tp_alloc(type, 0);
    if (self == NULL) {
        PyMem_Free(cache);
        return NULL;
    }
    self->by_key = Py_NewRef(by_key);
    self->fallback = Py_NewRef(fallback);
    self->cache = cache;
    self->vectorcall = applier_vectorcall;
    return (PyObject *)self;
}

static PyTypeObject MetricsApplierType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "collectors._speedups.MetricsApplier",
    .tp_basicsize = sizeof(MetricsApplier),
    .tp_dealloc = (destructor)applier_dealloc,
    .tp_vectorcall_offset = offsetof(MetricsApplier, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "MetricsApplier(by_key, fallback): applies metric records to cached series "
              "(compiled).",
    .tp_traverse = (traverseproc)applier_traverse,
    .tp_clear = (inquiry)applier_clear,
    .tp_methods = applier_methods,
    .tp_new = applier_new,
};

/* ------------------------------------------------------------------------ */
/* The trace store's batch check (collectors/trace.py)                      */

/* flat_span_batch(records, fields) -> bool: every record is a plain tuple of
   `fields` items whose attributes (item 10) are flat, i.e. empty or not
   starting with a (key, value) pair. */
static PyObject *flat_span_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "flat_span_batch(records, fields)");
        return NULL;
    }
    if (!PyTuple_Check(args[0])) Py_RETURN_FALSE;
    Py_ssize_t fields = PyLong_AsSsize_t(args[1]);
    if (fields == -1 && PyErr_Occurred()) return NULL;
    if (fields <= 10) {
        PyErr_SetString(PyExc_ValueError, "a span record has more than 10 fields");
        return NULL;
    }
    PyObject *records = args[0];
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(records); i++) {
        PyObject *record = PyTuple_GET_ITEM(records, i);
        if (!PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) != fields) Py_RETURN_FALSE;
        PyObject *attributes = PyTuple_GET_ITEM(record, 10);
        if (PyTuple_Check(attributes)) {
            if (PyTuple_GET_SIZE(attributes) > 0 &&
                PyTuple_CheckExact(PyTuple_GET_ITEM(attributes, 0))) {
                Py_RETURN_FALSE;
            }
        } else {
            int truth = PyObject_IsTrue(attributes);
            if (truth < 0) return NULL;
            if (truth) Py_RETURN_FALSE; /* not the records' shape: the checked path */
        }
    }
    Py_RETURN_TRUE;
}

static PyMethodDef module_functions[] = {
    {"flat_span_batch", (PyCFunction)(void (*)(void))flat_span_batch, METH_FASTCALL,
     "flat_span_batch(records, fields)\n--\n\n"
     "Whether every record is a plain span tuple with flat attributes."},
    {NULL},
};

/* ------------------------------------------------------------------------ */

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "collectors._speedups",
    "The compiled hot path of the observability pipeline (see collectors/hotpath.py).", -1,
    module_functions,
};

#define INTERN(var, text)                                                                       \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL;

PyMODINIT_FUNC PyInit__speedups(void) {
    INTERN(s_ok, "ok")
    INTERN(s_unset, "unset")
    INTERN(s_open, "open")
    INTERN(s_spans, "spans")
    INTERN(s_metrics, "metrics")
    INTERN(s_limit, "limit")
    INTERN(s_append, "append")
    INTERN(s_getrandbits, "getrandbits")
    INTERN(s_wake_at, "_wake_at")
    INTERN(s_wake, "_wake")
    INTERN(s_offer, "offer")
    INTERN(s_send_slow, "_send_slow")
    INTERN(s_start_span_py, "_start_span_py")
    INTERN(s_finish_py, "_finish_py")
    INTERN(s_validate, "_validate")
    INTERN(s_counter, "counter")
    INTERN(s_kind, "kind")
    INTERN(s_remote, "remote")
    INTERN(s_span_id, "span_id")
    INTERN(s_internal, "internal")
    INTERN(s_queue, "_queue")
    INTERN(s_yield_at, "_yield_at")
    INTERN(s_send, "send")
    INTERN(s_costs, "costs")
    INTERN(s_llm_call, "llm_call")
    INTERN(s_node, "node")
    INTERN(s_parent, "parent")
    INTERN(s_root, "root")
    INTERN(s_batch, "batch")
    INTERN(s_tenant_id, "tenant_id")
    INTERN(s_correlation_id, "correlation_id")
    INTERN(s_request_id, "request_id")
    if ((empty_tuple = PyTuple_New(0)) == NULL) return NULL;
    if ((zero = PyLong_FromLong(0)) == NULL) return NULL;
    if ((one = PyLong_FromLong(1)) == NULL) return NULL;
    if ((bits64 = PyLong_FromLong(64)) == NULL) return NULL;
    if ((bits128 = PyLong_FromLong(128)) == NULL) return NULL;
    if ((mask64 = PyLong_FromUnsignedLongLong(0xFFFFFFFFFFFFFFFFULL)) == NULL) return NULL;
    if ((float_max_int = PyLong_FromDouble(DBL_MAX)) == NULL) return NULL;
    kinds = PyFrozenSet_New(NULL);
    if (kinds == NULL) return NULL;
    const char *kind_names[] = {"workflow", "node", "generation", "internal"};
    for (int i = 0; i < 4; i++) {
        PyObject *k = PyUnicode_InternFromString(kind_names[i]);
        if (k == NULL || PySet_Add(kinds, k) < 0) return NULL;
        Py_DECREF(k);
    }
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL) return NULL;
    deque_type = PyObject_GetAttrString(collections, "deque");
    Py_DECREF(collections);
    if (deque_type == NULL) return NULL;
    deque_append = PyObject_GetAttrString(deque_type, "append");
    if (deque_append == NULL) return NULL;
    PyObject *time_module = PyImport_ImportModule("time");
    if (time_module == NULL) return NULL;
    time_ns_fn = PyObject_GetAttrString(time_module, "time_ns");
    perf_counter_ns_fn = PyObject_GetAttrString(time_module, "perf_counter_ns");
    Py_DECREF(time_module);
    if (time_ns_fn == NULL || perf_counter_ns_fn == NULL) return NULL;

    if (PyType_Ready(&CollectorBaseType) < 0 || PyType_Ready(&SpanBaseType) < 0 ||
        PyType_Ready(&TracerBaseType) < 0 || PyType_Ready(&MetricsBaseType) < 0 ||
        PyType_Ready(&CounterCellType) < 0 || PyType_Ready(&HistogramCellType) < 0 ||
        PyType_Ready(&MetricsApplierType) < 0 || PyType_Ready(&NodeWrapperType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "CollectorBase", (PyObject *)&CollectorBaseType) < 0 ||
        PyModule_AddObjectRef(m, "SpanBase", (PyObject *)&SpanBaseType) < 0 ||
        PyModule_AddObjectRef(m, "TracerBase", (PyObject *)&TracerBaseType) < 0 ||
        PyModule_AddObjectRef(m, "MetricsBase", (PyObject *)&MetricsBaseType) < 0 ||
        PyModule_AddObjectRef(m, "CounterCell", (PyObject *)&CounterCellType) < 0 ||
        PyModule_AddObjectRef(m, "HistogramCell", (PyObject *)&HistogramCellType) < 0 ||
        PyModule_AddObjectRef(m, "MetricsApplier", (PyObject *)&MetricsApplierType) < 0 ||
        PyModule_AddObjectRef(m, "NodeWrapper", (PyObject *)&NodeWrapperType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
