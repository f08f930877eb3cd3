"""A ``lastlayer push`` killed midway (a real SIGKILL of the real command, talking through
the real ``huggingface_hub`` client to the recording Hub on loopback): the repo gets the
artifact in one commit or not at all, the local folder is untouched, and pushing again
completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.hub import REPO, commit_of
from helpers.processes import child_env

from lastlayer import artifact
from lastlayer.cli import main


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("stage", ["/preupload/", "/commit/"])
def test_a_push_killed_midway_leaves_the_repo_as_it_was_and_pushing_again_completes_it(
        hub_server, pushable, tmp_path, stage, capsys):
    before = _snapshot(pushable)
    hub_server.hold = stage  # the Hub holds this request until the client is killed
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "lastlayer", "push", str(pushable), REPO],
                            env=child_env(TMPDIR=str(temp)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert hub_server.held.wait(120), proc.communicate(timeout=5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        hub_server.release.set()
    assert proc.returncode == -signal.SIGKILL
    commits = [e for e in hub_server.log if "/commit/" in e["path"]]
    # Nothing was committed before the one commit that carries every file; the held one
    # was never answered, so the Hub applies all of it or none (one commit is atomic).
    assert all(e.get("answered") is False for e in commits)
    assert len(commits) == (1 if stage == "/commit/" else 0)
    assert _snapshot(pushable) == before
    # What a kill leaves on this machine: the staging folder of hard links, in the temp dir.
    assert [p.name.startswith("lastlayer-push-") for p in temp.iterdir()] == [True]

    hub_server.hold, hub_server.log[:] = "", []
    assert main(["push", str(pushable), REPO]) == 0, capsys.readouterr().err
    _, files, _ = commit_of(hub_server.log)
    assert sorted(files) == sorted(artifact.files(pushable))
    for name in ("adapter_model.safetensors", "adapter_config.json", "recipe.yaml"):
        assert files[name] == before[name], name
    assert _snapshot(pushable) == before
