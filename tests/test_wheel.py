"""Install from the wheel: build sdist + wheel, install the wheel into a fresh venv, use it away from the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from sadcl import __version__
from sadcl.inference.open import open_model
from sadcl.ship.model_dir import export_model_dir
from support.ship import NAMES, make_run

pytest.importorskip("build")

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_installs_and_works_outside_the_repository(tmp_path: Path) -> None:
    # Build from a copy of the sources, so the build leaves nothing in the working tree.
    src = tmp_path / "src_copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)], tmp_path, env)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"sadcl-{__version__}-py3-none-any.whl"] and len(sdists) == 1

    # A fresh venv; torch & co. come from this environment's site-packages through a .pth line. A path added that
    # way is not itself a site directory, so its .pth files (the editable install of the repository) are not run.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path, env)
    vpy = venv / "bin" / "python"
    vsite = Path(_run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env))
    (Path(str(vsite).strip()) / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(vpy), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheels[0])], tmp_path, env)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([str(vpy), "-c", "import sadcl; print(sadcl.__file__)"], work, env).strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    sadcl_bin = str(venv / "bin" / "sadcl")
    assert "predict" in _run([sadcl_bin, "--help"], work, env)
    assert _run([sadcl_bin, "--version"], work, env).strip() == f"sadcl {__version__}"

    run = make_run(tmp_path / "run")
    model_dir = export_model_dir(open_model(run["ckpt"]), tmp_path / "shipped")
    out = work / "pred.json"
    _run([sadcl_bin, "predict", str(model_dir), str(run["images"]), "--all-scores", "--out", str(out)], work, env)
    results = json.loads(out.read_text())
    assert len(results) == 3 and set(results[0]["scores"]) == set(NAMES)

    api = textwrap.dedent(
        f"""
        import json, sys
        import sadcl
        from fastapi.testclient import TestClient
        from sadcl.inference.serve import create_app

        model, config, names = sadcl.load_model({str(model_dir)!r})
        client = TestClient(create_app({str(model_dir)!r}, examples=False))
        page = client.get("/")
        files = [("images", (n, open({str(run["images"])!r} + "/" + n, "rb").read(), "image/png"))
                 for n in ("p0.png", "p1.png")]
        res = client.post("/api/v1/predict", files=files)
        print(json.dumps({{"names": names, "page": page.status_code, "api": res.status_code,
                           "results": res.json()["results"], "file": sadcl.__file__}}))
        """
    )
    got = json.loads(_run([str(vpy), "-c", api], work, env).strip().splitlines()[-1])
    assert got["names"] == NAMES and got["page"] == 200 and got["api"] == 200
    assert Path(got["file"]).resolve().is_relative_to(venv.resolve())
    by_name = {r["image"].rsplit("/", 1)[-1]: r for r in results}
    for item in got["results"]:  # the API and the CLI of the installed package agree
        assert item["scores"] == pytest.approx(by_name[item["filename"]]["scores"], abs=1e-6)
