"""Your own model, on the driver: `model.build` parsed and resolved in specs, the builder found and
checked without importing it (one line for each thing missing), what travels to the workers and
to a cluster's job, the spec lint around it, a grid over its keyword arguments, and `plateau check`
with a builder, which imports neither Ray, TensorFlow nor JAX. No Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from service.grid import expand
from service.lint import lint
from service.spec import SpecError, dump_spec, load_spec, validate_train
from service.submitting import builder_code
from service.usermodel import BuilderError, ModelRef, check, load_builder, resolve, runtime_env_for
from tests.support.project import PROJECT_ROOT, plateau, python_env

BUILDER = "def build(input_shape, classes, keras=None, width=8):\n    return (tuple(input_shape), classes, width)\n"


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


@pytest.fixture
def own_modules():
    """Forget the modules a test imported from its tmp_path (the next test's may share a name)."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("nets", "mypkg_")):
            del sys.modules[name]


# ---------------------------------------------------------------------------------------------
# The spec's fields


def test_defaults_are_the_built_in_model_and_the_seed_columns():
    spec = load_spec(None)
    assert (spec.model.build, spec.model.kwargs) == (None, {})
    assert (spec.data.classes, spec.data.features, spec.data.labels, spec.data.shape) == (None, "image", "label", None)
    assert lint(load_spec(PROJECT_ROOT / "jobs/seed-reduce-lr.yaml")) == []


def test_a_file_is_read_from_the_spec_folder_and_set_from_the_current_one(tmp_path, monkeypatch):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs/nets.py").write_text(BUILDER)
    (tmp_path / "specs/run.yaml").write_text("model:\n  build: nets.py:build\n  kwargs: {width: 4, sizes: [1, 2]}\n")
    spec = load_spec(tmp_path / "specs/run.yaml")
    assert spec.model.build == f"{tmp_path / 'specs/nets.py'}:build"
    assert spec.model.kwargs == {"width": 4, "sizes": [1, 2]}
    # The resolved spec is stored and read back as it is (a run's identity, a trial's spec).
    import yaml
    assert validate_train(yaml.safe_load(dump_spec(spec))) == spec
    monkeypatch.chdir(tmp_path)
    assert load_spec(tmp_path / "specs/run.yaml", ["model.build=other/nets.py:build"]).model.build == \
        f"{tmp_path / 'other/nets.py'}:build"
    assert load_spec(None, ["model.build=pkg.models:cnn"]).model.build == "pkg.models:cnn"


def test_a_compare_base_reads_its_builder_from_its_own_folder(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base/train.yaml").write_text("model: {build: nets.py:build}\n")
    (tmp_path / "study.yaml").write_text("kind: compare\nbase: base/train.yaml\n"
                                         "grid: {model.build: [base/nets.py:build, wide.py:build]}\n")
    study = load_spec(tmp_path / "study.yaml")
    assert study.base.model.build == f"{tmp_path / 'base/nets.py'}:build"
    assert study.grid["model.build"] == [f"{tmp_path / 'base/nets.py'}:build", f"{tmp_path / 'wide.py'}:build"]


@pytest.mark.parametrize("override, line", [
    ("model.build=cnn", "model.build: 'cnn' names no function; expected MODULE:FUNCTION"),
    ("model.build=cnn.py:3d", "model.build: '3d' is not a Python function name"),
    ("model.build=my-models:build", "model.build: 'my-models' is neither a module name nor a .py file"),
    ("model.kwargs={classes: 3}", "model.kwargs: classes is what plateau passes the builder itself"),
    ("model.kwargs={'n-units': 3}", "model.kwargs: 'n-units' is not a Python name"),
    ("data.shape=[28, 0]", "data.shape: give every size of a row's shape as a number >= 1"),
    ("data.classes=1", "data.classes: Input should be greater than or equal to 2"),
])
def test_each_bad_field_is_one_line(override, line):
    with pytest.raises(SpecError) as exc:
        load_spec(None, ["model.build=pkg.models:cnn", override])
    assert one_line(exc).startswith(line), str(exc.value)


def test_the_built_in_model_has_ten_classes_and_its_own_fields():
    with pytest.raises(SpecError) as exc:
        load_spec(None, ["data.classes=3"])
    assert "data.classes 3: the built-in model has 10 classes (labels 0..9); set model.build" in one_line(exc)
    assert load_spec(None, ["data.classes=10"]).data.classes == 10
    # Fields the model in use never reads are lint findings: train says so and goes on.
    assert lint(load_spec(None, ["model.build=pkg.models:cnn", "model.hidden_units=128", "model.dropout=0.5"])) == [
        "model.hidden_units 128: only the built-in model reads it, and model.build names your own; give your "
        "model's settings in model.kwargs"]
    assert [f.split(":")[0] for f in lint(load_spec(None, ["model.kwargs={width: 3}", "data.shape=[28, 28]"]))] == [
        "model.kwargs ['width']", "data.shape [28, 28]"]


def test_a_grid_varies_the_builders_keyword_arguments(tmp_path):
    (tmp_path / "nets.py").write_text(BUILDER)
    (tmp_path / "study.yaml").write_text(
        "kind: compare\nname: widths\nbase: {model: {build: nets.py:build, kwargs: {width: 8, depth: 2}}}\n"
        "grid: {model.kwargs.width: [16, 32], model.learning_rate: [0.01, 0.001]}\nseeds: [7]\n")
    trials = expand(load_spec(tmp_path / "study.yaml"))
    assert [t.setting.label for t in trials] == [
        "model.kwargs.width=16,model.learning_rate=0.01", "model.kwargs.width=16,model.learning_rate=0.001",
        "model.kwargs.width=32,model.learning_rate=0.01", "model.kwargs.width=32,model.learning_rate=0.001"]
    assert trials[0].name == "widths-width-16_learning_rate-0.01-s7"
    assert [t.spec.model.kwargs for t in trials[::2]] == [{"width": 16, "depth": 2}, {"width": 32, "depth": 2}]
    assert lint(load_spec(tmp_path / "study.yaml")) == []
    (tmp_path / "bad.yaml").write_text("kind: compare\nbase: {model: {build: nets.py:build}}\n"
                                       "grid: {model.kwargs.keras: [1, 2]}\n")
    with pytest.raises(SpecError) as exc:
        expand(load_spec(tmp_path / "bad.yaml"))
    assert one_line(exc) == ("grid model.kwargs.keras=1: model.kwargs: keras is what plateau passes the builder "
                             "itself; rename that keyword")


# ---------------------------------------------------------------------------------------------
# Finding and checking the builder, importing nothing


def test_a_file_builder_is_found_and_travels_as_a_py_module(tmp_path, own_modules):
    (tmp_path / "nets.py").write_text("import numpy as np\n\n" + BUILDER + "\nalias = build\n")
    ref = check(resolve("nets.py:build", tmp_path))
    assert ref == ModelRef("build", file=tmp_path / "nets.py") and str(ref) == f"{tmp_path / 'nets.py'}:build"
    assert "nets" not in sys.modules  # checked by reading its source
    check(resolve("nets.py:alias", tmp_path))  # any top-level name will do
    assert runtime_env_for(ref) == {"py_modules": [str(tmp_path / "nets.py")]}
    assert load_builder(ref)((28, 28), 10) == ((28, 28), 10, 8)


def test_a_worker_without_the_file_imports_it_by_name(tmp_path, monkeypatch, own_modules):
    """On another node the driver's path does not exist: `py_modules` put the file on the import path."""
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped/nets.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path / "shipped"))
    build = load_builder(f"{tmp_path / 'driver-only/nets.py'}:build")
    assert build((20,), 3, width=2) == ((20,), 3, 2)


def test_a_module_builder_is_found_and_its_package_travels(tmp_path, monkeypatch, own_modules):
    (tmp_path / "mypkg_nets").mkdir()
    (tmp_path / "mypkg_nets/__init__.py").write_text("")
    (tmp_path / "mypkg_nets/models.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = check(resolve("mypkg_nets.models:build", tmp_path))
    assert ref == ModelRef("build", module="mypkg_nets.models")
    assert "mypkg_nets.models" not in sys.modules  # its package was imported to find it, the module was not
    assert runtime_env_for(ref) == {"py_modules": [str(tmp_path / "mypkg_nets")]}
    assert load_builder(ref)((4,), 2) == ((4,), 2, 8)
    # An installed module is expected on every node, as the project's dependencies are.
    assert runtime_env_for(check(resolve("yaml:safe_load", None))) == {}


def test_what_is_missing_is_one_line_saying_how_to_fix_it(tmp_path):
    (tmp_path / "nets.py").write_text("def build_cnn(input_shape, classes):\n    pass\n\n"
                                      "class Models:\n    def build(self):\n        pass\n")
    (tmp_path / "broken.py").write_text("def build(:\n")
    (tmp_path / "json.py").write_text(BUILDER)
    (tmp_path / "my-nets.py").write_text(BUILDER)
    cases = {
        "nosuchmod_xyz:build": "no module nosuchmod_xyz on the import path; set PYTHONPATH to the folder that "
                               "holds it, install it, or give the file: FILE.py:FUNCTION",
        "nets.py:build": f"{tmp_path / 'nets.py'} defines no top-level function build (did you mean build_cnn?); "
                         "name a function defined with def at the top of the file",
        "gone.py:build": f"no file {tmp_path / 'gone.py'}; a relative path is read from the spec file's folder",
        "broken.py:build": f"{tmp_path / 'broken.py'} is not valid Python (line 1:",
        "json.py:build": "json.py has the name of the module json",
        "my-nets.py:build": "my-nets.py is not a Python module name, and the workers import it by its name; "
                            "rename it with letters, digits and _ only (e.g. my_nets.py)",
        "keras.applications:ResNet50": "keras.applications is part of keras, which plateau imports only in the "
                                       "workers",
    }
    for build, line in cases.items():
        with pytest.raises(BuilderError) as exc:
            check(resolve(build, tmp_path))
        assert one_line(exc).startswith(line), (build, str(exc.value))


# ---------------------------------------------------------------------------------------------
# What a job carries to a cluster


def test_a_job_carries_the_builder_in_the_project_or_in_py_modules(tmp_path, monkeypatch):
    root = PROJECT_ROOT
    inside = load_spec(root / "examples/cnn.yaml")
    assert builder_code(inside, root) == ([], ["model.build=examples/cnn.py:build"])
    (tmp_path / "nets.py").write_text(BUILDER)
    outside = load_spec(root / "examples/cnn.yaml", [f"model.build={tmp_path / 'nets.py'}:build"])
    assert builder_code(outside, root) == ([str(tmp_path / "nets.py")], ["model.build=nets:build"])
    study = load_spec(root / "examples/cnn-filters.yaml")
    assert builder_code(study, root) == ([], ["model.build=examples/cnn.py:build"])
    (tmp_path / "study.yaml").write_text(f"kind: compare\nbase: {root / 'examples/cnn.yaml'}\n"
                                         "grid: {model.build: [nets.py:build, nets.py:build2]}\n")
    with pytest.raises(Exception) as exc:
        builder_code(load_spec(tmp_path / "study.yaml"), root)
    assert one_line(exc).startswith(f"grid model.build: {tmp_path / 'nets.py'} is outside the project directory")


def test_submit_sends_the_builder_with_the_job(tmp_path, monkeypatch):
    from service import jobs

    monkeypatch.chdir(PROJECT_ROOT)
    job = jobs.build_submission("examples/cnn.yaml", ["data.source=sample"])
    assert job["entrypoint"].endswith("--set data.source=sample --set model.build=examples/cnn.py:build")
    assert "py_modules" not in job["runtime_env"] and job["runtime_env"]["working_dir"] == str(PROJECT_ROOT)
    (tmp_path / "nets.py").write_text(BUILDER)
    job = jobs.build_submission("examples/cnn.yaml", [f"model.build={tmp_path / 'nets.py'}:build"])
    assert job["entrypoint"].endswith("--address auto --set model.build=nets:build")
    assert job["runtime_env"]["py_modules"] == [str(tmp_path / "nets.py")]


# ---------------------------------------------------------------------------------------------
# plateau check, in a process of its own


CHECK_IMPORTS = """
import sys
from service.cli import main
code = main(sys.argv[1:])
print("@@", code, sorted({m.split(".")[0] for m in sys.modules} & {"ray", "tensorflow", "tf_keras", "jax", "keras"}))
"""


def _check(tmp_path: Path, *args: str):
    import subprocess

    done = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, "check", *args], cwd=tmp_path, env=python_env(),
                          capture_output=True, text=True, timeout=120)
    code, loaded = done.stdout.rsplit("@@ ", 1)[1].split(" ", 1)
    return int(code), loaded.strip(), done.stderr


def test_check_finds_the_builder_next_to_the_spec_without_ray_tensorflow_or_jax(tmp_path):
    import numpy as np

    (tmp_path / "nets.py").write_text(BUILDER)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rows.npz", x_train=rng.normal(size=(120, 5)), y_train=rng.integers(0, 3, 120),
             x_test=rng.normal(size=(30, 5)), y_test=rng.integers(0, 3, 30))
    (tmp_path / "run.yaml").write_text("model: {build: nets.py:build}\ndata: {source: rows.npz}\n"
                                       "training: {batch_size: 20}\n")
    assert _check(tmp_path, "run.yaml") == (0, "[]", "")
    code, loaded, err = _check(tmp_path, "run.yaml", "--set", "model.build=nets.py:make")
    assert (code, loaded) == (2, "[]")
    assert err.splitlines() == [f"plateau: {tmp_path / 'nets.py'} defines no top-level function make (it defines "
                                "build); name a function defined with def at the top of the file"]
    code, _, err = _check(tmp_path, "run.yaml", "--set", "data.classes=2")
    assert (code, err.splitlines()) == (2, [
        "plateau: rows.npz: y_train has the label 2, outside 0..1 of data.classes 2; raise data.classes, or leave it "
        "out to count the classes from the data"])


def test_plateau_check_refuses_a_missing_module(tmp_path):
    (tmp_path / "run.yaml").write_text("model: {build: nosuchmod_xyz.models:build}\ndata: {source: sample}\n")
    done = plateau("check", "run.yaml", cwd=tmp_path, env=python_env())
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["plateau: no module nosuchmod_xyz.models on the import path; set PYTHONPATH "
                                        "to the folder that holds it, install it, or give the file: FILE.py:FUNCTION "
                                        "(a path relative to the spec file's folder)"]


def test_a_file_in_a_jobs_py_modules_goes_as_a_package_of_its_name(tmp_path):
    """Ray's job client packs every py_modules entry as a folder; a lone file goes as NAME/__init__.py,
    so the job's workers still `import NAME`, and the folder is gone after the upload."""
    from service.compat.ray import job_py_modules

    (tmp_path / "nets.py").write_text("def build():\n    return 1\n")
    env = {"working_dir": "/project", "py_modules": [str(tmp_path / "nets.py"), str(tmp_path / "pkg")]}
    with job_py_modules(env) as shipped:
        package = Path(shipped["py_modules"][0])
        assert package.name == "nets" and (package / "__init__.py").read_text() == "def build():\n    return 1\n"
        assert shipped["py_modules"][1] == str(tmp_path / "pkg") and shipped["working_dir"] == "/project"
    assert not package.exists()
    assert env["py_modules"][0] == str(tmp_path / "nets.py")  # the caller's env is left as it was


def test_code_ray_shipped_to_a_job_is_not_shipped_again(tmp_path, monkeypatch):
    """A job's driver finds its builder in Ray's runtime_resources: Ray refuses to merge a second
    py_modules into the job's, and the workers have it already."""
    shipped = tmp_path / "session" / "runtime_resources" / "py_modules_files" / "_ray_pkg_1" / "nets"
    shipped.mkdir(parents=True)
    (shipped / "__init__.py").write_text("def build():\n    return 1\n")
    monkeypatch.syspath_prepend(str(shipped.parent))
    assert runtime_env_for(resolve("nets:build", None)) == {}
