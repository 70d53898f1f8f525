"""Where the `kerasprune` command writes, and how quietly it starts.

- `out()` / `err()`: rich consoles for results (stdout) and progress, warnings, errors (stderr);
  `steps()`: a transient progress display.
- `setup(debug)`: what every command does first. Without `--debug`, framework log noise is
  silenced: TensorFlow's C++ logs (`TF_CPP_MIN_LOG_LEVEL`), the lines native libraries write
  straight to file descriptor 2 (TensorFlow prints some while it is imported, before its
  logging is initialized, and may be imported late, e.g. by Keras's data adapters on JAX),
  absl/TensorFlow/JAX Python logs and Python warnings; kerasprune's own warnings are printed
  as `warning: ...` in CLI words. Native output is kept in a temporary file and shown after
  an internal error; a native crash still prints Python's fault handler traceback. With
  `--debug`, everything is shown, with debug logs, and errors come with their traceback.
- `absorbed(logger)`: drop a logger's warnings while a step runs whose result carries them
  (a `Selection` records its warnings; the CLI prints them once).
- `run(command, args)`: run the click command and turn what happened into an exit code:
  0 success, 1 a usage or validation error (one line), 2 an internal error, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import logging
import os
import sys
import tempfile
import traceback
import warnings

from rich.console import Console
from rich.markup import escape

from kerasprune._cli.words import cli_words


class CliError(Exception):
    """A usage or validation problem found by the CLI itself (exit code 1)."""


#: `debug`: set by `setup` (and by `main` from the raw arguments, for parse errors).
STATE = {"debug": False}

_FRAMEWORK_LOGGERS = ("absl", "tensorflow", "jax", "jax._src.xla_bridge", "h5py", "matplotlib", "torch", "keras")


def out() -> Console:
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


@contextlib.contextmanager
def steps():
    """A transient rich progress display on stderr; `step(text)` marks the work under way."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err(), transient=True
    )
    with progress:

        @contextlib.contextmanager
        def step(text: str):
            task = progress.add_task(escape(text), total=None)
            try:
                yield
            finally:
                progress.remove_task(task)

        yield step


class _Handler(logging.Handler):
    """Log records on stderr through rich: `warning: ...` (CLI words), or full records in debug."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not kill the command
            message = str(record.msg)
        if STATE["debug"]:
            err().print(f"{record.levelname} {record.name}: {message}", markup=False, soft_wrap=True)
        else:
            level = record.levelname.lower()
            text = cli_words(message).replace("kerasprune.select: ", "")
            err().print(f"[yellow]{level}:[/] {escape(text)}", soft_wrap=True)


_HANDLER = _Handler()


def configure_logging(debug: bool) -> None:
    """Logging and framework verbosity for one run (idempotent)."""
    STATE["debug"] = debug
    if debug:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = logging.getLogger()
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("kerasprune").setLevel(logging.DEBUG if debug else logging.WARNING)
    for name in _FRAMEWORK_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.ERROR)
    logging.captureWarnings(debug)
    if not debug:
        warnings.filterwarnings("ignore")


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True):
    """Send file descriptor 2 to a temporary file while the block runs.

    Native libraries (TensorFlow's C++ runtime) write there directly, around Python's
    `sys.stderr`. If the block fails, what was captured is written back, so nothing that
    explains the failure is lost.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_backend(debug: bool) -> None:
    """Import Keras (and with it the backend), quietly unless `debug`."""
    with quiet_stderr(not debug):
        import keras  # noqa: F401


def detach_native_stderr() -> bool:
    """Send file descriptor 2 to a temporary file for the rest of the process; keep `sys.stderr`.

    Only when `sys.stderr` is the process's own descriptor 2 (a real command, not a test that
    captures output). Python's `sys.stderr` (progress, warnings, errors) is re-opened on a
    duplicate of the original descriptor, so it still reaches the terminal, and so does the
    fault handler's traceback if a native library crashes. Returns whether it detached.
    """
    if "native" in STATE:
        return True
    try:
        if sys.stderr.fileno() != 2:
            return False
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    sys.stderr.flush()
    terminal = os.dup(2)
    capture = tempfile.TemporaryFile()
    os.dup2(capture.fileno(), 2)
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = io.TextIOWrapper(io.FileIO(terminal, "w"), encoding=encoding, errors="backslashreplace",
                                  line_buffering=True)
    faulthandler.enable(file=sys.stderr)
    STATE["native"] = capture
    return True


def native_output(limit: int = 40) -> str:
    """The last `limit` lines native libraries wrote since `detach_native_stderr` (or '')."""
    capture = STATE.get("native")
    if capture is None:
        return ""
    capture.flush()
    capture.seek(0)
    text = capture.read().decode(errors="replace")
    capture.seek(0, 2)
    return "\n".join(text.splitlines()[-limit:])


def setup(debug: bool) -> None:
    """What every command runs first: logging, framework noise, the backend import."""
    configure_logging(debug)
    if not debug:
        detach_native_stderr()
    import_backend(debug)


@contextlib.contextmanager
def absorbed(name: str):
    """Drop warnings of logger `name` while the block runs (the CLI prints them itself)."""
    logger = logging.getLogger(name)

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or STATE["debug"]

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def warn(text: str) -> None:
    """Print a warning on stderr, in CLI words."""
    err().print(f"[yellow]warning:[/] {escape(cli_words(text))}", soft_wrap=True)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def run(command, args: list[str], *, prog_name: str) -> int:
    """Run a click `command` on `args`; print errors as one line; return the exit code."""
    import typer

    try:  # typer >= 0.22 vendors click
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
    except ImportError:  # pragma: no cover - older typer with click installed
        from click.exceptions import ClickException, NoArgsIsHelpError

    from kerasprune.errors import PruningError

    configure_logging("--debug" in args)  # before parsing: parse errors get tracebacks too
    try:
        rv = command.main(args=args, prog_name=prog_name, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except NoArgsIsHelpError as e:
        Console(stderr=True).print(e.format_message(), markup=False, highlight=False)
        return 1
    except (ClickException, CliError, PruningError) as e:
        message = e.format_message() if isinstance(e, ClickException) else cli_words(_one_line(e))
        err().print(f"[red]Error:[/] {escape(' '.join(message.split()))}", soft_wrap=True)
        if STATE["debug"]:
            err().print(traceback.format_exc(), markup=False)
        return 1
    except (KeyboardInterrupt, typer.Abort):
        err().print("Interrupted; no output was written partially.", markup=False)
        return 130
    except Exception as e:  # a bug, not the user's fault
        err().print(
            f"[red]Internal error:[/] {type(e).__name__}: {escape(_one_line(e))}"
            + ("" if STATE["debug"] else " (run with --debug for the traceback)"),
            soft_wrap=True,
        )
        if STATE["debug"]:
            err().print(traceback.format_exc(), markup=False)
        native = native_output()
        if native.strip():
            err().print("Output of native libraries (last lines):\n" + native, markup=False)
        return 2
