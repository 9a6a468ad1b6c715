"""A pip or pipx install in an isolated venv cannot import Debian's python3-nftables: porttrap
says so, and how to make the venv, instead of asking for a package that is already installed."""

from __future__ import annotations

import subprocess  # noqa: TID251 - a real venv, as pip users make it
from pathlib import Path

import pytest

from porttrap.cli import version
from porttrap.errors import FirewallError
from porttrap.firewall import kernel


def _debian_site(tmp_path: Path) -> Path:
    (tmp_path / "nftables").mkdir()
    (tmp_path / "nftables" / "__init__.py").write_text("")
    return tmp_path


def test_a_venv_that_cannot_see_debians_module_is_told_to_use_system_site_packages(
    tmp_path: Path,
) -> None:
    text = kernel.missing_module(_debian_site(tmp_path))
    assert f"is installed ({tmp_path / 'nftables'})" in text
    assert "cannot import it" in text
    assert "--system-site-packages" in text
    assert "pipx install --python /usr/bin/python3 --system-site-packages porttrap" in text
    assert "apt-get install" not in text


def test_without_the_package_the_fix_is_to_install_it(tmp_path: Path) -> None:
    text = kernel.missing_module(tmp_path)
    assert text.endswith(f"is missing: {kernel.INSTALL_HINT}")
    assert kernel.missing_fix(tmp_path) == "apt-get install nftables python3-nftables"


def test_nft_raises_the_hint_when_the_import_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(kernel, "SYSTEM_SITE", _debian_site(tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "nftables", None)  # import raises ImportError
    with pytest.raises(FirewallError, match=r"--system-site-packages") as caught:
        kernel.Nft()
    assert "apt-get install" not in str(caught.value)


def test_version_names_the_venv_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kernel, "SYSTEM_SITE", _debian_site(tmp_path))

    def no_binding() -> object:
        raise FirewallError(kernel.missing_module())

    line = version.text(no_binding, lambda program: f"/usr/sbin/{program}").splitlines()[1]
    assert (
        "libnftables not found (installed, but this venv cannot import it: make it with "
        "--system-site-packages)" in line
    )


def test_a_real_isolated_venv_is_told_so(tmp_path: Path) -> None:
    """What a plain `python3 -m venv` + pip install meets: Debian's module is there, the venv
    cannot see it."""
    if not (kernel.SYSTEM_SITE / "nftables").is_dir():
        pytest.skip("python3-nftables is not installed: apt-get install python3-nftables")
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    src = Path(kernel.__file__).resolve().parents[2]
    code = (
        f"import sys; sys.path.insert(0, {str(src)!r}); from porttrap.firewall.kernel import Nft\n"
        "try:\n    Nft()\nexcept Exception as err:\n    print(err)\n"
    )
    out = subprocess.run(
        [str(venv / "bin/python"), "-I", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "is installed (/usr/lib/python3/dist-packages/nftables)" in out
    assert f"this Python ({venv}/bin/python) cannot import it" in out
    assert "--system-site-packages" in out
