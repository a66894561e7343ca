"""An installed wheel has no repository around it: its defaults must not point inside site-packages,
and the wheel must carry everything the package opens at run time."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from sparcode.cli import main
from sparcode.commands import evaluate
from sparcode.data import paths
from sparcode.data.errors import DataError
from sparcode.eval.metrics import KS
from sparcode.pipeline import local_node

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def installed(monkeypatch):
    for module in (paths, local_node):
        monkeypatch.setattr(module, "repository_root", lambda: None)


def test_an_installed_package_asks_for_the_data_root_instead_of_guessing_inside_the_virtualenv(installed, monkeypatch):
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    with pytest.raises(DataError, match=r"\$SPARCODE_DATA is unset and sparcode is installed") as err:
        paths.data_root()
    assert "site-packages" not in str(err.value)


def test_the_checkout_default_is_shared_data_beside_the_repository(monkeypatch):
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    assert paths.default_root() == REPO.parent / "shared" / "data"


def test_an_installed_package_keeps_its_node_in_one_per_user_cache_whatever_the_working_directory(
        installed, monkeypatch, tmp_path):
    monkeypatch.delenv(local_node.ELASTICSEARCH.home_var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    homes = set()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        homes.add(local_node.default_home(local_node.ELASTICSEARCH))
    assert homes == {tmp_path / "cache" / "sparcode" / "es"}
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: ignore a relative value
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert local_node.default_home(local_node.ELASTICSEARCH) == tmp_path / "home" / ".cache" / "sparcode" / "es"
    monkeypatch.setenv(local_node.ELASTICSEARCH.home_var, str(tmp_path / "mine"))
    assert local_node.default_home(local_node.ELASTICSEARCH) == tmp_path / "mine"


def test_the_checkout_keeps_its_node_in_its_ignored_cache(monkeypatch):
    monkeypatch.delenv(local_node.OPENSEARCH.home_var, raising=False)
    assert local_node.default_home(local_node.OPENSEARCH) == REPO / ".cache" / "opensearch"


def test_the_wheel_carries_the_mappings_and_nothing_beside_the_package(tmp_path):
    # Built from a copy, so that no build/ or egg-info lands in the checkout.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(["cp", "-r", str(REPO / "sparcode"), str(source / "sparcode")], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("sparcode-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level - {"sparcode"} == {f"sparcode-{wheel.name.split('-')[1]}.dist-info"}
    mappings = {path.name for path in (REPO / "sparcode" / "es_mappings").glob("*.json")}
    assert mappings and {name.rsplit("/", 1)[1] for name in names if name.startswith("sparcode/es_mappings/")
                         and name.endswith(".json")} == mappings
    assert "sparcode/__main__.py" in names
    assert not any("/tests/" in name or name.startswith("tests/") for name in names)


def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "sparcode", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("sparcode, version ")


def test_evaluate_reports_the_metrics_cut_offs_and_its_knob_floor_is_the_longest():
    assert evaluate.KS == KS and evaluate.LONGEST_LIST == max(KS)


@pytest.mark.parametrize("args", [
    ["search", "--run", "{tmp}", "--history", "i1", "--filter", "genre"],
    ["search", "--run", "{tmp}", "--history", "i1", "--filter", " =g1"],
    ["evaluate", "{tmp}", "--backend", "hnsw", "--ef", "49"],
])
def test_malformed_option_values_are_usage_errors_before_any_work(tmp_path, args):
    result = CliRunner().invoke(main, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "run").exists()


def test_only_sparcodes_own_pyproject_marks_the_checkout(tmp_path):
    from sparcode.checkout import repository_root

    assert repository_root() is not None  # the tests run from the checkout
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "my-recsys-app"\n')
    assert repository_root(tmp_path) is None  # a vendored copy beside another project's file
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "sparcode"\n')
    assert repository_root(tmp_path) == tmp_path
    (tmp_path / "pyproject.toml").write_text("not toml [")
    assert repository_root(tmp_path) is None
