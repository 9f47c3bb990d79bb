"""Runs experiments/*.py for the tests as `python <script> <args>` would, in a forked process.

    python tests/script_server.py    (then one JSON request per line on stdin; see `serve`)

A test's script run spent about a second importing JAX, Flax, Orbax and jaxae before it parsed a
flag, and the suite runs scripts some fifty times. This process imports them once and forks a
child per request; the child runs the script file as `__main__` (runpy), with the request's argv,
working directory and environment, its stdout and stderr in files, and exits with the script's
exit code. What the script does is unchanged: a fresh process would import the same modules before
parsing its flags, and what they print then starts each child's output. No JAX backend is started
here (a child starts its own) and no Python thread runs here; the only other threads are
OpenBLAS's, which it stops and restarts around a fork. conftest.run_script uses it for runs with
this process's JAX and XLA settings and starts a plain subprocess otherwise
(test_scripts.py compares the two).
"""

import atexit
import json
import os
import runpy
import sys
import threading
import time

# What the scripts import at their top; importing a script itself would define its flags here, so
# only the library is imported.
PRELOAD = ("jax", "jax.numpy", "numpy", "absl.app", "absl.flags", "ml_collections.config_flags",
           "orbax.checkpoint", "jaxae", "jaxae.run.scripts", "jaxae.run.train_and_evaluate",
           "jaxae.report.figures", "jaxae.report.summaries", "jaxae.pretrained")
# Read by JAX or XLA when they are imported or start: a request that sets them otherwise needs a
# process of its own (the caller falls back to one).
PROCESS_WIDE = ("JAX_", "XLA_", "TF_", "PYTHON")


def serve(requests, responses) -> None:
  """For each request {"script", "args", "cwd", "env", "stdout", "stderr", "timeout"}, answers
  {"returncode": int} (negative: killed by that signal), {"timeout": true}, or {"fallback": why}
  when the request needs another process-wide setting."""
  started_env = dict(os.environ)
  for line in requests:
    request = json.loads(line)
    differs = sorted(k for k in set(request["env"]) | set(started_env)
                     if k.startswith(PROCESS_WIDE) and request["env"].get(k) != started_env.get(k))
    if differs:
      responses.write(json.dumps({"fallback": f"environment differs in {differs}"}) + "\n")
      responses.flush()
      continue
    pid = os.fork()
    if pid == 0:
      _child(request)  # Never returns.
    responses.write(json.dumps(_wait(pid, request["timeout"])) + "\n")
    responses.flush()


def _wait(pid: int, timeout: float) -> dict:
  deadline = time.monotonic() + timeout
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      return {"returncode": os.waitstatus_to_exitcode(status)}
    if time.monotonic() > deadline:
      os.kill(pid, 9)
      os.waitpid(pid, 0)
      return {"timeout": True}
    time.sleep(0.005)


_SERVER_PID = os.getpid()
_exit_code = 0  # The child's, for _end_child.


def _end_child() -> None:
  """Registered before any other atexit function, so in a child it runs after all of them (and
  after the interpreter joined the threads): the child ends there with its script's exit code
  and skips the interpreter's last teardown (freeing every module and compiled program one by
  one), which changes nothing a test reads and takes time on every script run."""
  if os.getpid() != _SERVER_PID:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_code)  # pylint: disable=protected-access


atexit.register(_end_child)


def _child(request) -> None:
  """Runs the request's script as this process's `__main__` and never returns: the script's end,
  its SystemExit or its exception leaves this process as it would leave a fresh one (the
  interpreter then joins the threads and runs the atexit functions, `_end_child` last)."""
  global _exit_code
  for fd, path in ((1, request["stdout"]), (2, request["stderr"]), (0, os.devnull)):
    target = os.open(path, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(target, fd)
    os.close(target)
    if fd in (1, 2):
      os.write(fd, _PRINTED[fd - 1])  # What the imports printed, as in a fresh process.
  os.chdir(request["cwd"])
  os.environ.clear()
  os.environ.update(request["env"])
  script = request["script"]
  sys.argv = [script, *request["args"]]
  sys.path[0] = os.path.dirname(os.path.abspath(script))  # This file's folder, until now.
  try:
    runpy.run_path(script, run_name="__main__")
  except SystemExit as e:  # Python prints a message that is not a code, and exits 1 for it.
    _exit_code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    raise
  except BaseException:  # Python prints the traceback and exits 1.
    _exit_code = 1
    raise
  sys.exit(0)


def _preload() -> tuple[bytes, bytes]:
  """Imports PRELOAD; returns what the imports printed to stdout and stderr, which a fresh
  process would print before the script's own lines (each child's output starts with it)."""
  import importlib  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  printed = []
  saved = {fd: os.dup(fd) for fd in (1, 2)}
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    try:
      os.dup2(out.fileno(), 1)
      os.dup2(err.fileno(), 2)
      for module in PRELOAD:
        importlib.import_module(module)
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      for fd, copy in saved.items():
        os.dup2(copy, fd)
        os.close(copy)
    for f in (out, err):
      f.seek(0)
      printed.append(f.read())
  return printed[0], printed[1]


if __name__ == "__main__":
  _PRINTED = _preload()
  # The figures' pyplot too, which the scripts import only when they draw (so what it prints,
  # such as matplotlib's note that it builds its font cache on a new machine, is not repeated in
  # every child's output).
  import jaxae.report.figures  # pylint: disable=g-import-not-at-top
  jaxae.report.figures._pyplot()  # pylint: disable=protected-access
  assert threading.active_count() == 1, threading.enumerate()
  serve(sys.stdin, sys.stdout)
