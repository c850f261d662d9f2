"""Votes survive a Space restart, several replicas and a kill (a folder stands in for the Hub repo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vse.serving.feedback import FeedbackStore, Vote
from vse.serving.vote_backup import FolderFiles, HubDatasetFiles, VoteBackup


def replica(tmp_path: Path, name: str, repo: Path, every: float = 3600) -> tuple[FeedbackStore, VoteBackup]:
    """An app process: a fresh local disk, the shared repo."""
    store = FeedbackStore(tmp_path / name / "votes.db")
    backup = VoteBackup(store, FolderFiles(repo), every_seconds=every, replica=name).start()
    return store, backup


def keys(store: FeedbackStore) -> set[tuple[str, str, str, str]]:
    return {(v.user, v.image_id, v.tag, v.verdict) for v in store.votes()}


def test_a_restart_with_an_empty_disk_keeps_every_vote(tmp_path):
    repo = tmp_path / "repo"
    store, backup = replica(tmp_path, "first", repo)
    for k in range(3):
        store.add_vote("ann", f"img{k}", "hash", "wrong", "rev")
    backup.stop()  # a clean shutdown uploads the journal
    restarted, again = replica(tmp_path, "restarted", repo)  # new disk: empty database
    assert keys(restarted) == keys(store)
    again.stop()
    assert len(FolderFiles(repo).read("votes/first.jsonl").splitlines()) == 3  # never truncated by the restart


def test_two_replicas_keep_the_union_and_the_latest_vote_wins(tmp_path):
    repo = tmp_path / "repo"
    a, backup_a = replica(tmp_path, "a", repo)
    b, backup_b = replica(tmp_path, "b", repo)
    for k in range(5):
        a.add_vote("ann", f"img{k}", "tag", "wrong", "rev")
    b.add_vote("bob", "img9", "tag", "right", "rev")
    b.add_vote("ann", "img0", "tag", "right", "rev")  # ann changed her mind later, on the other replica
    backup_a.stop()
    backup_b.stop()
    c, backup_c = replica(tmp_path, "c", repo)
    verdicts = {(v.user, v.image_id): v.verdict for v in c.votes()}
    assert len(verdicts) == 6 and verdicts[("ann", "img0")] == "right" and verdicts[("bob", "img9")] == "right"
    assert c.merge(a.votes() + b.votes()) == 0  # merging again changes nothing
    backup_c.stop()


def test_a_kill_loses_at_most_the_votes_since_the_last_flush(tmp_path):
    repo = tmp_path / "repo"
    store, backup = replica(tmp_path, "killed", repo)
    store.add_vote("ann", "img1", "a", "wrong", "rev")
    store.add_vote("ann", "img2", "b", "wrong", "rev")
    assert backup.flush() and not backup.flush()  # uploads only when the journal grew
    store.add_vote("ann", "img3", "c", "wrong", "rev")  # never flushed: the process is killed now
    with (repo / "votes" / "killed.jsonl").open("a") as handle:
        handle.write('{"user": "ann", "time": 1')  # and a line cut short by the kill
    restarted, again = replica(tmp_path, "after-kill", repo)
    assert {v.image_id for v in restarted.votes()} == {"img1", "img2"}
    again.stop()


def test_the_timer_flushes_without_a_shutdown(tmp_path):
    import time

    repo = tmp_path / "repo"
    store, backup = replica(tmp_path, "timed", repo, every=0.2)
    store.add_vote("ann", "img1", "a", "wrong", "rev")
    deadline = time.monotonic() + 10
    while not (repo / "votes" / "timed.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads((repo / "votes" / "timed.jsonl").read_text())["image_id"] == "img1"
    backup.stop()


class FakeHub:
    """A folder-backed fake of the four huggingface_hub calls the backup makes."""

    def __init__(self, root: Path):
        self.root, self.created = root, []

    def api(self, token=None):
        hub = self

        class Api:
            def __init__(self, token=None):
                self.token = token

            def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
                hub.created.append((repo_id, repo_type, private))
                (hub.root / repo_id).mkdir(parents=True, exist_ok=True)

            def list_repo_files(self, repo_id, repo_type=None):
                base = hub.root / repo_id
                return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())

            def upload_file(self, path_or_fileobj, path_in_repo, repo_id, repo_type=None, commit_message=None):
                target = hub.root / repo_id / path_in_repo
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(Path(path_or_fileobj).read_bytes())

        return Api(token)

    def download(self, repo_id, filename, repo_type=None, local_dir=None, force_download=False, token=None):
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((self.root / repo_id / filename).read_bytes())
        return str(target)


def test_hub_dataset_files_against_a_fake_hub(tmp_path, monkeypatch):
    import huggingface_hub

    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", hub.api)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.download)
    files = HubDatasetFiles("someone/votes")
    assert hub.created == [("someone/votes", "dataset", True)]
    store = FeedbackStore(tmp_path / "one" / "votes.db")
    backup = VoteBackup(store, files, replica="one").start()
    store.add_vote("ann", "img1", "hash", "wrong", "rev")
    backup.stop()
    restarted = FeedbackStore(tmp_path / "two" / "votes.db")
    VoteBackup(restarted, HubDatasetFiles("someone/votes"), replica="two").restore()
    assert keys(restarted) == {("ann", "img1", "hash", "wrong")}


@pytest.mark.parametrize(
    "line",
    [
        '{"user": "", "time": 1, "image_id": "i", "tag": "t", "verdict": "wrong", "model_revision": "r"}',
        '{"user": "a", "time": "x", "image_id": "i", "tag": "t", "verdict": "wrong", "model_revision": "r"}',
        '{"user": "a", "time": 1, "image_id": "i", "tag": "t", "verdict": "maybe", "model_revision": "r"}',
        "[1, 2, 3]",
        "not json",
    ],
)
def test_malformed_backed_up_votes_are_skipped(tmp_path, line):
    repo = tmp_path / "repo"
    good = Vote("ann", 5.0, "img", "tag", "right", "rev")
    (repo / "votes").mkdir(parents=True)
    (repo / "votes" / "old.jsonl").write_text(line + "\n" + json.dumps(good.__dict__) + "\n")
    store, backup = replica(tmp_path, "new", repo)
    assert keys(store) == {("ann", "img", "tag", "right")}
    backup.stop()
