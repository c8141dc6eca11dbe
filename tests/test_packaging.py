"""What a user installs: `pip install .` gives working console commands from any directory, the
sample catalog as the default only where no ./catalog.csv exists, `python -m udp_price`, and
`--version` everywhere, with usage lines that name the command as it was invoked."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, run_cli

from udp_price import __version__

COMMANDS = ("udp-price-server", "udp-price-client", "udp-price-proxy")


def test_python_m_udp_price_prints_the_version() -> None:
    r = run_cli("-m", "udp_price", "--version")
    assert (r.returncode, r.stdout) == (0, f"udp-price {__version__}\n")


@pytest.mark.parametrize("command", ["server", "client", "proxy", "demo"])
def test_every_subcommand_has_a_version_and_names_itself_as_invoked(command: str) -> None:
    version = run_cli("-m", "udp_price", command, "--version")
    assert version.returncode == 0 and version.stdout.strip().endswith(f"(udp-price) {__version__}")
    usage = run_cli("-m", "udp_price", command, "--help")
    assert usage.returncode == 0 and usage.stdout.startswith(f"usage: python -m udp_price {command} ")


@pytest.mark.parametrize("script", ["udp_server.py", "udp_client.py", "fault_proxy.py", "demo.py"])
def test_the_checkout_entry_points_name_themselves(script: str) -> None:
    r = run_cli(script, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"usage: {script} ")


def test_an_unknown_subcommand_is_a_usage_error() -> None:
    r = run_cli("-m", "udp_price", "serve")
    assert r.returncode == 2 and "unknown command 'serve'" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a fresh venv holding the wheel built from this checkout. No network:
    the wheel is built without build isolation, and the dependencies come from this test
    environment's site-packages through a .pth file (which does not carry its editable install)."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp.glob("udp_price-*.whl")
    with zipfile.ZipFile(wheel) as z:
        top = {name.split("/")[0] for name in z.namelist() if not name.split("/")[0].endswith(".dist-info")}
        assert "udp_price/sample_catalog.csv" in z.namelist()
    assert top == {"udp_price", "wire_format.py"}, "the wheel installs one package and the layout module, no more"
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    Path(site, "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stderr
    return env_dir / "bin"


def run_in(cwd: Path, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_the_installed_commands_work_from_any_directory(installed: Path, tmp_path: Path) -> None:
    for command in COMMANDS:
        r = run_in(tmp_path, str(installed / command), "--version")
        assert (r.returncode, r.stdout) == (0, f"{command} (udp-price) {__version__}\n"), r.stderr
        usage = run_in(tmp_path, str(installed / command), "--help")
        assert usage.stdout.startswith(f"usage: {command} "), usage.stderr
    r = run_in(tmp_path, str(installed / "python"), "-m", "udp_price", "--version")
    assert r.stdout == f"udp-price {__version__}\n"
    where = run_in(tmp_path, str(installed / "python"), "-c", "import udp_price, wire_format as w; print(w.__file__)")
    # The wheel under test, not the checkout (whose editable install the venv must not see).
    assert where.returncode == 0 and where.stdout.startswith(str(installed.parent)), where


def quote_from(cwd: Path, bin_dir: Path) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Start the installed server in ``cwd``, quote one apple through the installed client; the
    server's start line and the client's result."""
    server = subprocess.Popen(
        [str(bin_dir / "udp-price-server"), "--port", "0"], cwd=cwd, text=True, stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        address = line.split("listening on ")[1].split()[0]
        quote = run_in(cwd, str(bin_dir / "udp-price-client"), "--server", address, "quote", "apple", "2")
    finally:
        server.terminate()
        server.communicate(timeout=10)
    return line, quote


def test_the_sample_catalog_is_the_default_only_without_a_local_one(installed: Path, tmp_path: Path) -> None:
    line, quote = quote_from(tmp_path, installed)
    assert "sample_catalog.csv" in line and str(ROOT) not in line, line
    assert (quote.returncode, quote.stdout) == (0, "2 x apple @ 0.50 = 1.00\n"), quote.stderr
    (tmp_path / "catalog.csv").write_text("item,price\napple,1.25\n", encoding="utf-8")
    line, quote = quote_from(tmp_path, installed)
    assert f"catalog {tmp_path / 'catalog.csv'}" in line, line
    assert (quote.returncode, quote.stdout) == (0, "2 x apple @ 1.25 = 2.50\n"), quote.stderr
