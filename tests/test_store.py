"""The study store: config, trial and epoch fragments (stores opened with compact=False keep them until
compact(); see tests/test_vocabulary.py for compaction on every write), latest-wins reads, crash-safe compaction,
export, validation and foreign files."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lab.errors import LabError
from lab.study.store import (EPOCH_FIELDS, EPOCH_SCHEMA, TRIAL_FIELDS, TRIAL_SCHEMA, StoreError,
                             StudyStore)

T0 = dt.datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone.utc)


def trial(number: int, **changes) -> dict:
    row = {
        "number": number, "state": "complete", "arch_id": f"a{number:04x}",
        "text": "patch4:16,ln | mhsa(h=2,mlp=2) 2x16 | cls,ln", "family": "vit",
        "kinds": ["mhsa"], "layout": "isotropic", "stem": "patch", "params": 1000 + number,
        "macs": 10_000 * (number + 1), "res": 28, "dataset": "mnist5k", "fraction": 0.5,
        "n_train": 2500, "epochs": 3, "epochs_done": 3, "recipe": "vit",
        "hparams": '{"lr": 0.001, "depth": 2}', "seed": number, "val_top1": 0.5 + number / 100,
        "val_top5": 0.9, "test_top1": 0.49, "test_top5": 0.89, "loss": 1.25,
        "train_seconds": 12.5, "images_per_second": 600.0, "peak_memory": 2**31,
        "device": "cpu", "started_at": T0, "finished_at": T0 + dt.timedelta(seconds=13),
        "worker": "host/123", "checkpoint": None,
    }
    row.update(changes)
    return row


def curve(number: int, n: int = 3, scale: float = 1.0) -> list[dict]:
    return [{"epoch": e, "loss": scale * 2.0 / e, "val_top1": 0.1 * e, "seconds": 4.0 * e}
            for e in range(1, n + 1)]


def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


# --- schema and config ----------------------------------------------------------------------

def test_schemas_name_the_fields_in_order():
    assert TRIAL_SCHEMA.names == [n for n, _, _ in TRIAL_FIELDS]
    assert EPOCH_SCHEMA.names == ["number", "epoch", "loss", "val_top1", "seconds", "n_train"]
    assert len(EPOCH_FIELDS) == 6
    assert TRIAL_SCHEMA.field("kinds").type == pa.list_(pa.string())
    assert TRIAL_SCHEMA.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert all(meaning for _, _, meaning in TRIAL_FIELDS)


def test_config_round_trip_and_errors(tmp_path):
    store = StudyStore(tmp_path / "studies" / "s1")
    assert store.folder.is_dir()
    with pytest.raises(StoreError, match=r"study\.yaml: no study config"):
        store.load_config()
    config = {"space": "hybrid", "dataset": "mnist5k", "objectives": [["val_top1", "max"]],
              "recipe": {"name": "vit", "epochs": 3, "lr": 1e-3}, "budget": {"macs": 10**9}}
    store.save_config(config)
    assert StudyStore(tmp_path / "studies" / "s1").load_config() == config
    assert not list(store.folder.glob(".*.tmp"))
    store.config_path.write_text("space: [unclosed\n")
    with pytest.raises(StoreError, match=r"study\.yaml: corrupt study config") as e:
        store.load_config()
    assert "\n" not in str(e.value) and isinstance(e.value, LabError)
    store.config_path.write_text("- a list\n")
    with pytest.raises(StoreError, match="not a mapping"):
        store.load_config()


def test_optuna_url_is_an_absolute_sqlite_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = StudyStore("studies/s")
    assert store.optuna_url == f"sqlite:///{tmp_path.resolve()}/studies/s/optuna.db"
    assert store.optuna_url.startswith("sqlite:////")


# --- trials and epochs ----------------------------------------------------------------------

def test_round_trip_of_trials_and_epochs(tmp_path):
    store = StudyStore(tmp_path, compact=False)
    assert store.trials().num_rows == 0 and store.trials().schema == TRIAL_SCHEMA
    assert store.epochs().num_rows == 0 and store.epochs().schema == EPOCH_SCHEMA
    written = [trial(5), trial(0, state="failed", error="diverged", val_top1=None),
               trial(2, kinds=["conv", "mhsa"], hparams={"lr": 0.1, "w": 2})]
    for row in written:
        store.write_trial(row)
    store.write_epochs(5, curve(5))
    store.write_epochs(0, curve(0, n=1))
    assert (store.folder / "trials" / "part-000005.parquet").exists()
    got = rows(store.trials())
    assert [r["number"] for r in got] == [0, 2, 5]
    by_number = {r["number"]: r for r in got}
    expected5 = {name: written[0].get(name) for name in TRIAL_SCHEMA.names}
    assert by_number[5] == expected5
    assert by_number[0]["error"] == "diverged" and by_number[0]["val_top1"] is None
    assert by_number[0]["lab_version"] is None                    # left out -> null
    assert by_number[2]["hparams"] == '{"lr": 0.1, "w": 2}'      # dict -> sorted JSON
    assert by_number[2]["kinds"] == ["conv", "mhsa"]
    assert by_number[5]["started_at"] == T0                       # microseconds kept, UTC
    ep = store.epochs()
    assert ep.schema == EPOCH_SCHEMA
    assert [(r["number"], r["epoch"]) for r in rows(ep)] == [(0, 1), (5, 1), (5, 2), (5, 3)]
    assert rows(ep)[-1] == {"number": 5, "epoch": 3, "loss": 2.0 / 3, "val_top1": 0.1 * 3, "seconds": 12.0,
                            "n_train": None}


def test_pandas_reads_the_files(tmp_path):
    store = StudyStore(tmp_path, compact=False)
    for n in range(3):
        store.write_trial(trial(n))
        store.write_epochs(n, curve(n))
    fragment = pd.read_parquet(store.folder / "trials" / "part-000001.parquet")
    assert fragment["number"].tolist() == [1] and fragment["val_top1"].tolist() == [0.51]
    assert sorted(pd.read_parquet(store.folder / "trials")["number"]) == [0, 1, 2]   # the fragment folder
    store.compact()
    frame = pd.read_parquet(store.trials_path)
    assert frame["number"].tolist() == [0, 1, 2]
    assert str(frame["started_at"].dt.tz) == "UTC" and list(frame["kinds"][0]) == ["mhsa"]
    assert pd.read_parquet(store.epochs_path).shape == (9, 6)


def test_latest_write_of_a_trial_wins(tmp_path):
    store = StudyStore(tmp_path)
    store.write_trial(trial(3, state="pruned", epochs_done=1, val_top1=0.2))
    store.write_epochs(3, curve(3, n=1))
    store.write_trial(trial(3, state="complete", epochs_done=3, val_top1=0.7))
    store.write_epochs(3, curve(3, n=3, scale=2.0))
    assert [(r["state"], r["val_top1"]) for r in rows(store.trials())] == [("complete", 0.7)]
    assert [r["loss"] for r in rows(store.epochs())] == [4.0, 2.0, 4.0 / 3]
    # a newer fragment also wins over compacted rows, and replaces all of that trial's epochs
    store.compact()
    store.write_trial(trial(3, state="failed", error="oom"))
    store.write_epochs(3, curve(3, n=2))
    assert [r["state"] for r in rows(store.trials())] == ["failed"]
    assert [r["epoch"] for r in rows(store.epochs())] == [1, 2]


def test_compaction_preserves_content_and_removes_fragments(tmp_path):
    store = StudyStore(tmp_path, compact=False)
    for n in (4, 1, 7):
        store.write_trial(trial(n))
        store.write_epochs(n, curve(n, n=n % 3 + 1))
    before = rows(store.trials()), rows(store.epochs())
    store.compact()
    assert not list((store.folder / "trials").glob("*")) and not list((store.folder / "epochs").glob("*"))
    assert pq.read_table(store.trials_path).num_rows == 3
    assert (rows(store.trials()), rows(store.epochs())) == before
    # a second round merges new fragments into the compacted tables
    store.write_trial(trial(1, val_top1=0.99))
    store.write_trial(trial(9))
    store.write_epochs(9, curve(9))
    store.compact()
    assert not list((store.folder / "trials").glob("*"))
    got = rows(store.trials())
    assert [r["number"] for r in got] == [1, 4, 7, 9] and got[0]["val_top1"] == 0.99
    assert [r["number"] for r in rows(store.epochs())].count(9) == 3
    store.compact()                                         # nothing to do: still the same
    assert [r["number"] for r in rows(store.trials())] == [1, 4, 7, 9]


def _snapshot(folder: Path) -> Path:
    copy = folder.parent / f"{folder.name}-copy"
    shutil.copytree(folder, copy)
    return copy


def test_reading_after_a_crash_in_the_middle_of_compaction(tmp_path):
    store = StudyStore(tmp_path / "s", compact=False)
    store.write_trial(trial(1, val_top1=0.1))
    store.write_epochs(1, curve(1, n=2))
    store.compact()                                          # old compacted rows: trial 1 (v1)
    store.write_trial(trial(1, val_top1=0.8))                # fragments: trial 1 (v2), trial 2
    store.write_epochs(1, curve(1, n=4))
    store.write_trial(trial(2))
    store.write_epochs(2, curve(2))
    expected = rows(store.trials()), rows(store.epochs())
    assert [r["val_top1"] for r in expected[0]] == [0.8, 0.52]
    assert len(expected[1]) == 7

    # crash before the compacted file is renamed: fragments + old compacted + a stray temp file
    (store.folder / ".trials.parquet.crash.tmp").write_bytes(b"PAR1 half a table")
    (store.folder / "trials" / ".part-000003.parquet.crash.tmp").write_bytes(b"")
    assert (rows(store.trials()), rows(store.epochs())) == expected

    # crash after the compacted files are renamed, before the fragments are deleted
    fragments = _snapshot(store.folder)
    store.compact()
    assert not list(store.folder.rglob("*.tmp"))             # compaction sweeps the leftovers
    for kind in ("trials", "epochs"):
        shutil.rmtree(store.folder / kind)
        shutil.copytree(fragments / kind, store.folder / kind)
    assert len(list((store.folder / "trials").glob("part-*"))) == 2
    assert (rows(store.trials()), rows(store.epochs())) == expected

    # crash between the trial table and the epoch table: new trials.parquet, old epochs.parquet
    shutil.copy(fragments / "epochs.parquet", store.folder / "epochs.parquet")
    assert (rows(store.trials()), rows(store.epochs())) == expected

    # and the next compaction settles it
    store.compact()
    assert (rows(store.trials()), rows(store.epochs())) == expected
    assert not list((store.folder / "trials").glob("*"))


def test_concurrent_writers_of_different_trials_and_a_compactor(tmp_path):
    store = StudyStore(tmp_path, compact=False)
    errors = []

    def worker(k: int):
        try:
            mine = StudyStore(tmp_path, compact=False)                         # each worker opens its own store
            for n in range(k, 120, 6):
                mine.write_trial(trial(n))
                mine.write_epochs(n, curve(n, n=2))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def compactor(stop: threading.Event):
        while not stop.is_set():
            store.compact()

    stop = threading.Event()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    background = threading.Thread(target=compactor, args=(stop,))
    background.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    background.join()
    assert not errors
    assert [r["number"] for r in rows(store.trials())] == list(range(120))
    assert len(rows(store.epochs())) == 240
    store.compact()
    assert [r["number"] for r in rows(store.trials())] == list(range(120))


# --- export ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_is_readable_by_pandas(tmp_path, fmt):
    store = StudyStore(tmp_path / "s")
    for n in range(3):
        store.write_trial(trial(n, kinds=["conv", "mhsa"][: n % 2 + 1]))
        store.write_epochs(n, curve(n))
    store.compact()
    store.write_trial(trial(3, state="rejected", error="over budget", kinds=None, val_top1=None))
    paths = store.export(tmp_path / "out", fmt)
    assert paths == [tmp_path / "out" / f"trials.{fmt}", tmp_path / "out" / f"epochs.{fmt}"]
    read = pd.read_parquet if fmt == "parquet" else pd.read_csv
    trials, epochs = read(paths[0]), read(paths[1])
    assert trials["number"].tolist() == [0, 1, 2, 3]
    assert list(trials.columns) == TRIAL_SCHEMA.names and list(epochs.columns) == EPOCH_SCHEMA.names
    assert trials["state"].tolist() == ["complete"] * 3 + ["rejected"]
    assert trials["val_top1"].tolist()[:3] == [0.5, 0.51, 0.52] and pd.isna(trials["val_top1"][3])
    assert len(epochs) == 9 and epochs["seconds"].tolist()[:3] == [4.0, 8.0, 12.0]
    if fmt == "csv":
        assert trials["kinds"].tolist()[:2] == ['["conv"]', '["conv", "mhsa"]']
        assert pd.to_datetime(trials["started_at"]).tolist()[0] == pd.Timestamp(T0)
    with pytest.raises(ValueError, match="'json'"):
        store.export(tmp_path / "out", "json")


# --- validation and foreign files -----------------------------------------------------------

@pytest.mark.parametrize("change, match", [
    ({"accuracy": 0.5}, "unknown column 'accuracy'"),
    ({"macs": 1.5}, "column 'macs': expected an integer"),
    ({"macs": "10"}, "column 'macs': expected an integer"),
    ({"params": True}, "column 'params': expected an integer"),
    ({"res": 2**40}, "column 'res': expected an integer in"),
    ({"val_top1": "0.5"}, "column 'val_top1': expected a number"),
    ({"kinds": "conv"}, "column 'kinds': expected a list of strings"),
    ({"kinds": ["conv", 3]}, "column 'kinds': expected a list of strings"),
    ({"started_at": "2025-01-01"}, "column 'started_at': expected a datetime"),
    ({"started_at": dt.datetime(2025, 1, 1)}, "column 'started_at': expected a timezone-aware"),
    ({"text": 3}, "column 'text': expected a string"),
    ({"state": "done"}, "column 'state': expected one of complete, pruned, failed, rejected"),
    ({"number": None}, "column 'number'"),
    ({"number": -1}, "column 'number'"),
    ({"hparams": "lr=0.1"}, "column 'hparams': expected a JSON object"),
])
def test_write_trial_rejects_unknown_columns_and_wrong_types(tmp_path, change, match):
    store = StudyStore(tmp_path)
    with pytest.raises(ValueError, match=match):
        store.write_trial({**trial(1), **change})
    assert store.trials().num_rows == 0


def test_write_epochs_rejects_bad_rows(tmp_path):
    store = StudyStore(tmp_path)
    with pytest.raises(ValueError, match="unknown column 'acc'"):
        store.write_epochs(1, [{"epoch": 1, "acc": 0.3}])
    with pytest.raises(ValueError, match="column 'epoch': expected an integer"):
        store.write_epochs(1, [{"epoch": 1.0}])
    with pytest.raises(ValueError, match="column 'epoch': repeated"):
        store.write_epochs(1, [{"epoch": 1}, {"epoch": 1}])
    with pytest.raises(ValueError, match="says 2, not trial 1"):
        store.write_epochs(1, [{"number": 2, "epoch": 1}])
    with pytest.raises(ValueError, match="column 'epoch': missing"):
        store.write_epochs(1, [{"loss": 1.0}])
    assert store.epochs().num_rows == 0
    store.write_epochs(1, [{"number": 1, "epoch": 1, "loss": None}])   # missing values -> null
    store.write_trial(trial(1))
    assert rows(store.epochs()) == [{"number": 1, "epoch": 1, "loss": None, "val_top1": None, "seconds": None,
                                   "n_train": None}]


def test_a_table_written_before_a_column_was_added_reads_it_as_null(tmp_path):
    store = StudyStore(tmp_path)
    store.write_trial(trial(1, worker_seconds=14.0))
    old = TRIAL_SCHEMA.empty_table().drop_columns(["worker_seconds"])
    old = pa.Table.from_pylist([{k: v for k, v in trial(2).items()}], schema=old.schema)
    pq.write_table(old, store.folder / "trials" / "part-000002.parquet")
    assert [r["worker_seconds"] for r in rows(store.trials())] == [14.0, None]
    store.compact()
    assert [r["worker_seconds"] for r in rows(store.trials())] == [14.0, None]


def test_foreign_parquet_files_are_rejected_naming_file_and_column(tmp_path):
    store = StudyStore(tmp_path)
    store.write_trial(trial(1))
    foreign = pa.table({"number": [2], "state": ["complete"]})
    pq.write_table(foreign, store.folder / "trials" / "part-000002.parquet")
    with pytest.raises(StoreError, match=r"part-000002\.parquet: not a study trial table "
                                         r"\(missing column 'error'\)"):
        store.trials()
    (store.folder / "trials" / "part-000002.parquet").unlink()
    pq.write_table(pa.table({"number": [1], "epoch": [1], "loss": [0.5]}), store.epochs_path)
    with pytest.raises(StoreError, match=r"epochs\.parquet: not a study epoch table \(missing column 'val_top1'\)"):
        store.epochs()
    store.epochs_path.write_bytes(b"not parquet at all")
    with pytest.raises(StoreError, match=r"epochs\.parquet: not a readable Parquet file"):
        store.epochs()
    typed = pa.table({name: pa.array(["x"]) for name in EPOCH_SCHEMA.names})
    pq.write_table(typed, store.epochs_path)
    with pytest.raises(StoreError, match=r"epochs\.parquet: column 'number' is string"):
        store.epochs()
    assert [r["number"] for r in rows(store.trials())] == [1]          # trials unaffected


def test_epochs_of_a_trial_show_only_once_its_row_exists(tmp_path):
    """A trial's curve is written just before its row: a reader in between (or after a crash there)
    sees neither, not a curve of a trial the trials table lacks."""
    store = StudyStore(tmp_path)
    store.write_trial(trial(1))
    store.write_epochs(1, [{"epoch": 1, "loss": 1.0}])
    store.write_epochs(2, [{"epoch": 1, "loss": 2.0}])   # trial 2's row is not written yet
    assert store.epochs().column("number").to_pylist() == [1]
    store.compact()
    assert store.epochs().column("number").to_pylist() == [1]
    store.write_trial(trial(2))
    assert store.epochs().column("number").to_pylist() == [1, 2]


def test_buffered_writes_are_read_back_and_land_compacted(tmp_path):
    store = StudyStore(tmp_path / "s")
    store.write_trial({"number": 0, "state": "complete", "val_top1": 0.5})
    store.compact()
    with store.buffered():
        store.write_trial({"number": 1, "state": "pruned", "val_top1": 0.2})
        store.write_trial({"number": 0, "state": "complete", "val_top1": 0.7})   # a later write wins
        store.write_epochs(1, curve(1, n=2))
        assert not list((tmp_path / "s" / "trials").glob("*.parquet"))   # nothing written yet
        assert [r["val_top1"] for r in rows(store.trials())] == [0.7, 0.2]   # but read back
    again = StudyStore(tmp_path / "s")
    assert [(r["number"], r["val_top1"]) for r in rows(again.trials())] == [(0, 0.7), (1, 0.2)]
    assert len(rows(again.epochs())) == 2 and not list((tmp_path / "s" / "epochs").glob("*.parquet"))
    with pytest.raises(RuntimeError), store.buffered():   # an error in the block still writes what it had
        store.write_trial({"number": 2, "state": "failed", "error": "x"})
        raise RuntimeError
    assert [r["number"] for r in rows(StudyStore(tmp_path / "s").trials())] == [0, 1, 2]


def test_the_readme_documents_every_column():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Study tables"):readme.index("### Benchmark tables\n")]
    for name, _, _ in TRIAL_FIELDS + EPOCH_FIELDS:
        if not name.startswith("zc_"):   # the proxies' columns are documented as a family
            assert f"| `{name}` |" in section, name
