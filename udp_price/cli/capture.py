"""--pcap for the fault proxy and the demo: open the capture file (refusing one that cannot be
written at start), say once when writing fails later, flush and close it at the end."""

from __future__ import annotations

import contextlib
import os
import sys
import time

from udp_price.faults.pcap import PcapWriter, ProxyCapture


def _why(e: BaseException) -> str:
    return str(e.strerror) if isinstance(e, OSError) and e.strerror else str(e)


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, /dev/fd/N...
    except OSError:  # one of them does not exist yet: not the same file
        return False


def open_capture(path: str | None, log: str | None = None) -> ProxyCapture | str | None:
    """The --pcap capture with its header written and flushed (so a full disk shows at start),
    None without --pcap, or the one-line error. ``log`` (--log's path) must be another file: two
    writers interleaving in one file would leave neither readable."""
    if path is None:
        return None
    if log is not None and log != "-" and _same_file(path, log):
        return f"fault_proxy: --pcap and --log are the same file ({path}); give each its own"
    try:
        out = open(path, "wb")  # noqa: SIM115 - closed by close_capture
    except OSError as e:
        return f"fault_proxy: cannot open capture {path}: {e.strerror}"
    writer = PcapWriter(out)
    writer.flush()
    if writer.error is not None:
        with contextlib.suppress(OSError):
            out.close()
        return f"fault_proxy: cannot write capture {path}: {_why(writer.error)}"

    def stopped(e: BaseException) -> None:
        print(f"fault_proxy: capture stopped ({_why(e)}); still relaying", file=sys.stderr, flush=True)

    # Epoch timestamps from the relay's monotonic clock: the wall clock is read once, here.
    return ProxyCapture(writer, time.time() - time.monotonic(), on_error=stopped)


def close_capture(capture: ProxyCapture | None) -> bool:
    """Flush and close the capture; True if it failed at any point (said on stderr once)."""
    if capture is None:
        return False
    writer = capture.writer
    out = writer.file
    failed_before = writer.error is not None
    writer.flush()
    if writer.error is not None and not failed_before and capture.on_error is not None:
        capture.on_error(writer.error)
    if writer.error is not None:  # what is still buffered cannot be written: let close() find nowhere to fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    with contextlib.suppress(OSError):
        out.close()
    return writer.error is not None
