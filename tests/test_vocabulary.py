"""One vocabulary across the run, trial and benchmark tables: `family` (lab.catalog.family_of), the
trial table's state words for runs too, timestamp[us, tz=UTC], a struct for the recipe, a
trials.parquet readable at every moment, and the migration of tables written before it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lab.catalog import entries, family_of, kinds_family, migrated_family, named, resolve
from lab.grammar.text import parse
from lab.kinds import MIXER_FAMILIES, REGISTRY
from lab.study.store import TRIAL_SCHEMA, StudyStore
from lab.tabular.table import load_bench
from lab.train.recipes import Recipe, recipe
from lab.train.record import RECIPE_TYPE, RUN_FIELDS, RUN_SCHEMA, TIME, VOCABULARY, VOCABULARY_KEY, append_record, read_records

MIXED = "@28 | conv(c=16,s=2),bn,relu | mhsa(h=2) 1x16 | basic 1x16 | ln,gap,fc"   # kinds mhsa, basic
T0 = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC)


def _mixer_rank(kind: str) -> int:
    return MIXER_FAMILIES.index(REGISTRY[kind].mixer_family)


# --- family --------------------------------------------------------------------------------

def test_a_named_point_says_its_catalog_family_also_scaled():
    for ref in ("resnet18", "resnet18@32px,w=0.25", "swin_t@28px,w=0.25", "vit_s16@32px,p=4"):
        base = ref.partition("@")[0]
        assert family_of(resolve(ref), ref) == entries()[base].family, ref   # what `lab arch list` shows
    assert family_of(resolve("resnet18@32px,w=0.25"), "resnet18@32px,w=0.25") == "resnet"
    # grammar text of a named point at its native size is named without the name
    assert family_of(parse(named("swin_t").text)) == "swin"
    assert family_of(parse(named("resnet50").text), "@" + named("resnet50").text[1:]) == "resnet"


def test_a_sampled_point_is_its_kinds_in_mixer_order():
    assert family_of(parse(MIXED)) == "basic+mhsa"        # conv before global attention, whatever the stage order
    assert kinds_family(["mixer", "swin", "basic", "swin", "mhsa", "nat"]) == "basic+mhsa+swin+nat+mixer"
    assert kinds_family(["convnext", "basic"]) == "basic+convnext"   # by name within the conv family
    assert kinds_family(["mhsa"]) == "mhsa"


def test_every_sampled_hybrid_point_is_named_by_its_kinds_never_hybrid():
    from lab.study.space import load_space

    space = load_space("hybrid")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        point = space.sample(study.ask())
        if point.spec is None:
            continue
        kinds = {st.block.kind for st in point.spec.stages}
        words = family_of(point.spec).split("+")
        assert set(words) == kinds and len(words) == len(kinds)
        ranks = [(_mixer_rank(k), k) for k in words]
        assert ranks == sorted(ranks)
        seen.add("+".join(words))
    assert any("+" in w for w in seen) and "hybrid" not in seen


def test_a_search_trial_row_takes_the_family_of_its_point_not_of_the_worker(tmp_path):
    """A replayed benchmark row of an older lab says `hybrid`; the trial row says the point's kinds."""
    from lab.study.search import LabSearch
    from lab.study.space import load_space

    store = StudyStore(tmp_path)
    searcher = LabSearch(load_space("hybrid"), store, [("val_top1", "max"), ("macs", "min")],
                         optuna.samplers.RandomSampler(seed=0), "unit", optuna.storages.InMemoryStorage(),
                         {"dataset": "mnist5k"}, 10, 1)
    config = searcher.suggest("t0")
    assert not (tmp_path / "trials.parquet").exists() or duckdb.sql(
        f"SELECT count(*) FROM '{tmp_path / 'trials.parquet'}' WHERE state = 'complete'").fetchall() == [(0,)]
    searcher.on_trial_complete("t0", {"number": config["number"], "kind": "final", "state": "complete", "epoch": 1,
                                      "val_top1": 0.5, "loss": 1.0, "seconds": 1.0, "family": "hybrid"})
    (row,) = [r for r in store.trials().to_pylist() if r["state"] == "complete"]
    assert row["family"] == family_of(parse(row["text"])) == kinds_family(row["kinds"])
    # trials.parquet holds the row the moment it was written (DuckDB, no compact() call)
    got = duckdb.sql(f"SELECT number, family, state FROM '{tmp_path / 'trials.parquet'}' WHERE state = 'complete'")
    assert got.fetchall() == [(row["number"], row["family"], "complete")]


def test_a_scaling_arm_says_its_catalog_family():
    from lab.study.grid import ScalingGrid, parse_arms

    grid = ScalingGrid(parse_arms(["resnet18@28px,w=0.25", MIXED]), [0.5, 1.0], [0], 1, "fixed", None, 28, 10, 1)
    families = [grid.points[name][3] for name in grid.archs]
    assert families == ["resnet", "basic+mhsa"]


# --- runs ----------------------------------------------------------------------------------

def test_a_run_row_speaks_the_trial_tables_words(tmp_path):
    """record()'s row of a named, scaled point (prepared, not trained: a hand-made fit result)."""
    from lab.train.run import Fitted, prepare, record

    p = prepare("resnet18@16px,w=0.125", "digits", epochs=1, batch_size=64, fraction=0.2, device="cpu")
    history = [{"epoch": 1, "loss": 1.5, "val_top1": None, "seconds": 0.5}]
    done = Fitted(model=p.model.eval(), status="ok", error=None, history=history, last_val=None, train_seconds=0.5,
                  images_seen=64)
    record(p, done, tmp_path)
    record(p, Fitted(p.model, "diverged", "loss became nan at epoch 1, step 1", [], None, 0.0, 0), tmp_path)
    path = tmp_path / "runs.parquet"
    assert pq.read_schema(path).metadata[VOCABULARY_KEY] == VOCABULARY
    ok, failed = read_records(path).to_pylist()
    assert ok["state"] == "complete" and ok["error"] is None and ok["family"] == "resnet"
    assert (failed["state"], failed["error"]) == ("failed", "diverged: loss became nan at epoch 1, step 1")
    assert ok["recipe_fields"] == recipe("default", epochs=1, batch_size=64).to_dict() and ok["probe"] is None
    assert pq.read_schema(path).field("started_at").type == TIME == TRIAL_SCHEMA.field("started_at").type
    assert ok["started_at"] == p.started
    got = duckdb.sql(f"SELECT recipe_fields.lr, state, family FROM '{path}' ORDER BY state").fetchall()
    assert got == [(Recipe().lr, "complete", "resnet"), (Recipe().lr, "failed", "resnet")]


def test_the_recipe_struct_has_every_recipe_field_typed():
    import dataclasses

    assert [f.name for f in RECIPE_TYPE] == [f.name for f in dataclasses.fields(Recipe)]
    types = {f.name: f.type for f in RECIPE_TYPE}
    assert types["epochs"] == pa.int64() and types["lr"] == pa.float64() and types["optimizer"] == pa.string()
    assert types["dropout"] == pa.float64() and types["flip"] == pa.bool_()
    table = pa.Table.from_pylist([{"recipe_fields": recipe("vit").to_dict()}],
                                 schema=pa.schema([pa.field("recipe_fields", RECIPE_TYPE)]))
    assert Recipe(**table.to_pylist()[0]["recipe_fields"]) == recipe("vit")   # lossless


def _old_runs(path: Path) -> None:
    """A run table in the first vocabulary: status, timestamp[s], recipe_json, families `basic`/`hybrid`."""
    old_fields = []
    for name, type_, _ in RUN_FIELDS:
        if name == "state":
            old_fields.append(pa.field("status", pa.string()))
        elif name == "recipe_fields":
            old_fields.append(pa.field("recipe_json", pa.string()))
        elif name == "started_at":
            old_fields.append(pa.field(name, pa.timestamp("s", tz="UTC")))
        elif name != "probe":
            old_fields.append(pa.field(name, type_))
    schema = pa.schema(old_fields)
    base = {name: None for name in schema.names}
    rows = [
        {**base, "run_id": "ok", "status": "ok", "started_at": T0, "text": MIXED, "family": "hybrid", "recipe": "vit",
         "recipe_json": json.dumps({**recipe("vit").to_dict(), "retired_field": 1}), "val_top1": 0.5},
        {**base, "run_id": "nan", "status": "diverged", "error": "loss became nan at epoch 1, step 1",
         "started_at": T0 + dt.timedelta(seconds=1), "text": named("resnet18").text, "family": "basic",
         "recipe": "default", "recipe_json": json.dumps({"lr": 0.1})},
        {**base, "run_id": "probe", "status": "ok", "started_at": T0, "text": MIXED, "family": "resnet",
         "recipe": "probe", "recipe_json": json.dumps({"method": "ridge", "l2": 0.5})},
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_an_old_run_table_reads_in_the_current_vocabulary(tmp_path):
    path = tmp_path / "runs.parquet"
    _old_runs(path)
    assert pq.read_schema(path).field("started_at").type == pa.timestamp("ms", tz="UTC")   # what Parquet keeps of [s]
    table = read_records(path)
    assert table.schema == RUN_SCHEMA
    ok, nan, probe = table.to_pylist()
    assert (ok["state"], ok["error"]) == ("complete", None)
    assert (nan["state"], nan["error"]) == ("failed", "diverged: loss became nan at epoch 1, step 1")
    assert ok["started_at"] == T0 and nan["started_at"] == T0 + dt.timedelta(seconds=1)
    assert ok["recipe_fields"] == recipe("vit").to_dict() and ok["probe"] is None   # the retired key is dropped
    assert nan["recipe_fields"]["lr"] == 0.1 and nan["recipe_fields"]["epochs"] is None
    assert probe["recipe_fields"] is None and probe["probe"] == {"method": "ridge", "l2": "0.5"}
    # families: the old `hybrid` and a kind word are recomputed from the text, a named family stays
    assert [r["family"] for r in (ok, nan, probe)] == ["basic+mhsa", "resnet", "resnet"]
    # the next append rewrites the whole table in the current schema
    append_record(path, {**{n: None for n in RUN_SCHEMA.names}, "run_id": "new", "state": "complete",
                         "started_at": T0, "family": "resnet", "text": MIXED})
    assert pq.read_schema(path).metadata[VOCABULARY_KEY] == VOCABULARY
    assert pq.read_table(path).schema.remove_metadata() == RUN_SCHEMA.remove_metadata()
    got = duckdb.sql(f"SELECT run_id, state, family FROM '{path}' ORDER BY run_id").fetchall()
    assert got == [("nan", "failed", "resnet"), ("new", "complete", "resnet"), ("ok", "complete", "basic+mhsa"),
                   ("probe", "complete", "resnet")]


def test_migrated_family_rule():
    assert migrated_family("resnet", "not grammar") == "resnet"          # a named family stays
    assert migrated_family("hybrid", MIXED) == "basic+mhsa"              # the old word of every mixed point
    assert migrated_family("hybrid", "not grammar") == "hybrid"          # nothing to recompute from
    assert migrated_family("basic", named("resnet18").text) == "resnet"  # native named text: its family
    assert migrated_family(None, None) is None


# --- studies -------------------------------------------------------------------------------

def _trial(number: int, **changes) -> dict:
    return {"number": number, "state": "complete", "text": MIXED, "family": "basic+mhsa", "kinds": ["basic", "mhsa"],
            "val_top1": 0.5, "started_at": T0, **changes}


def test_trials_parquet_holds_every_row_after_every_write(tmp_path):
    store = StudyStore(tmp_path)
    path = tmp_path / "trials.parquet"
    for n in range(3):
        store.write_epochs(n, [{"epoch": 1, "loss": 1.0, "val_top1": 0.1 * n, "seconds": 1.0}])
        store.write_trial(_trial(n, val_top1=0.1 * n))
        got = duckdb.sql(f"SELECT number, val_top1 FROM '{path}' ORDER BY number").fetchall()
        assert got == [(i, pytest.approx(0.1 * i)) for i in range(n + 1)]
        assert duckdb.sql(f"SELECT count(*) FROM '{tmp_path / 'epochs.parquet'}'").fetchall() == [(n + 1,)]
    store.write_trial(_trial(1, state="pruned"))   # a later write of a trial replaces it there too
    assert duckdb.sql(f"SELECT state FROM '{path}' WHERE number = 1").fetchall() == [("pruned",)]
    assert not list((tmp_path / "trials").glob("*.parquet"))   # each fragment was merged, then deleted
    ts = duckdb.sql(f"SELECT started_at FROM '{path}' LIMIT 1").fetchall()[0][0]
    assert ts.tzinfo is not None and ts.astimezone(dt.UTC) == T0


def test_buffered_writes_still_land_once(tmp_path):
    store = StudyStore(tmp_path)
    with store.buffered():
        for n in range(3):
            store.write_trial(_trial(n))
        assert not (tmp_path / "trials.parquet").exists()    # a replay writes nothing until its end
    assert duckdb.sql(f"SELECT count(*) FROM '{tmp_path / 'trials.parquet'}'").fetchall() == [(3,)]


def test_an_old_trial_table_migrates_family_and_time_units(tmp_path):
    fields = [pa.field(f.name, pa.timestamp("ms", tz="UTC") if f.name == "started_at" else f.type)
              for f in TRIAL_SCHEMA]
    old = pa.Table.from_pylist([_trial(0, family="hybrid"), _trial(1, family="resnet"),
                                _trial(2, family="hybrid", text="@28 | ??")], schema=pa.schema(fields))
    pq.write_table(old, tmp_path / "trials.parquet")   # no vocabulary in its metadata: an older lab's
    store = StudyStore(tmp_path)
    rows = store.trials().to_pylist()
    assert [r["family"] for r in rows] == ["basic+mhsa", "resnet", "hybrid"]
    assert store.trials().schema.field("started_at").type == TIME and rows[0]["started_at"] == T0
    store.write_trial(_trial(3))   # the next write rewrites trials.parquet in the current vocabulary
    assert pq.read_schema(tmp_path / "trials.parquet").metadata[VOCABULARY_KEY] == VOCABULARY
    assert duckdb.sql(f"SELECT family FROM '{tmp_path / 'trials.parquet'}' ORDER BY number").fetchall() == [
        ("basic+mhsa",), ("resnet",), ("hybrid",), ("basic+mhsa",)]


def test_benchmark_tables_speak_it_too(tmp_path):
    bench = load_bench("hybrid")   # the shipped table, rewritten in the current vocabulary
    families = bench.table.column("family").to_pylist()
    assert "hybrid" not in families
    for text, family in list(zip(bench.table.column("text").to_pylist(), families))[:40]:
        assert family == family_of(parse(text))
    # an older table (no vocabulary in its metadata) migrates as it is read
    raw = pq.read_table(bench.source)
    meta = {k: v for k, v in raw.schema.metadata.items() if k != VOCABULARY_KEY}
    i = raw.schema.get_field_index("family")
    old = raw.set_column(i, raw.schema.field(i), pa.array(["hybrid"] * raw.num_rows, pa.string()))
    pq.write_table(old.replace_schema_metadata(meta), tmp_path / "old.parquet")
    assert load_bench(tmp_path / "old.parquet").table.column("family").to_pylist() == families


def test_the_readme_documents_every_run_column_and_the_migration():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Result schema"):readme.index("### Study tables")]
    for name, _, meaning in RUN_FIELDS:
        assert f"| `{name}` |" in section and meaning in section, name
    for word in ("Migration rule", "`status`", "`recipe_json`", "timestamp[s]", "MIXER_FAMILIES"):
        assert word in section, word
