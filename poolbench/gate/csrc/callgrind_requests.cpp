// callgrind client requests for Python: switch instrumentation on and off, and
// count exactly one call of a Python callable.
//
// Why an extension: callgrind's client requests are magic instruction sequences
// (valgrind/callgrind.h) that only compiled code can execute; outside valgrind
// they are a few no-op instructions.  torch._C._valgrind_toggle* toggles
// collection only, which counts nothing while instrumentation is off, and
// instrumentation is what makes valgrind slow: keeping it off while torch is
// imported and the cases are warmed up saves most of the run.
//
// No torch headers: the module is plain CPython and builds in seconds.
#include <Python.h>
#include <valgrind/callgrind.h>
#include <valgrind/valgrind.h>

static PyObject* running_on_valgrind(PyObject*, PyObject*) {
  return PyBool_FromLong(RUNNING_ON_VALGRIND ? 1 : 0);
}

static PyObject* start_instrumentation(PyObject*, PyObject*) {
  CALLGRIND_START_INSTRUMENTATION;
  Py_RETURN_NONE;
}

static PyObject* stop_instrumentation(PyObject*, PyObject*) {
  CALLGRIND_STOP_INSTRUMENTATION;
  Py_RETURN_NONE;
}

// count(fn, label): collect events only while fn() runs, then dump them under
// label (one dump file per call).  The collection switch sits right around the
// call so that as little as possible besides fn itself is counted.
static PyObject* count(PyObject*, PyObject* args) {
  PyObject* fn;
  const char* label;
  if (!PyArg_ParseTuple(args, "Os:count", &fn, &label)) return nullptr;
  if (!PyCallable_Check(fn)) {
    PyErr_SetString(PyExc_TypeError, "count: the first argument must be callable");
    return nullptr;
  }
  CALLGRIND_TOGGLE_COLLECT;
  PyObject* result = PyObject_CallNoArgs(fn);
  CALLGRIND_TOGGLE_COLLECT;
  CALLGRIND_DUMP_STATS_AT(label);
  if (result == nullptr) return nullptr;
  Py_DECREF(result);
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"running_on_valgrind", running_on_valgrind, METH_NOARGS, "True inside valgrind."},
    {"start_instrumentation", start_instrumentation, METH_NOARGS, "CALLGRIND_START_INSTRUMENTATION."},
    {"stop_instrumentation", stop_instrumentation, METH_NOARGS, "CALLGRIND_STOP_INSTRUMENTATION."},
    {"count", count, METH_VARARGS, "count(fn, label): collect only while fn() runs, dump as label."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "poolbench_callgrind", nullptr, -1, methods};

PyMODINIT_FUNC PyInit_poolbench_callgrind(void) { return PyModule_Create(&module); }
