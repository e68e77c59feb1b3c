"""oxenlocal without a repository: the missing extra, finding a repository's folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.errors import OutputError
from pipeline.oxenlocal import find_root, oxen_module, root_of


def test_without_the_oxen_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "oxen", None)  # `import oxen` fails

    with pytest.raises(OutputError, match=r"pip install 'pipeline\[oxen\]'"):
        oxen_module()


def test_the_repository_is_the_nearest_folder_above_holding_dot_oxen(tmp_path: Path) -> None:
    (tmp_path / "repo" / ".oxen").mkdir(parents=True)
    (tmp_path / "repo" / "inner").mkdir()
    (tmp_path / "repo" / "inner" / ".oxen").write_text("")  # a file named .oxen is not one

    assert find_root(tmp_path / "repo" / "inner" / "deep" / "out.csv") == tmp_path / "repo"
    assert find_root(tmp_path / "repo" / "out.csv") == tmp_path / "repo"
    assert find_root(tmp_path / "elsewhere" / "out.csv") is None
    with pytest.raises(OutputError, match="oxen init"):
        root_of(tmp_path / "elsewhere" / "out.csv")
