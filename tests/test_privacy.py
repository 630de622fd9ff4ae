"""Privacy: keyed pseudonyms, personal columns dropped, `recforge forget` erasing a user now and in later runs."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from recforge.config import RunConfig
from recforge.data.contract import DataError, Dataset
from recforge.privacy import (
    DEFAULT_KEY_ENV,
    PrivacyConfig,
    apply_privacy,
    deidentify,
    personal_columns,
    pseudonymise_id,
    pseudonymise_ids,
)
from recforge.store import ChampionDecision, Store

KEY = b"k" * 32
GOOD = Path(__file__).parent / "data" / "bad" / "good"
AS_OF = datetime(2022, 1, 1, tzinfo=UTC)


def _dataset() -> Dataset:
    interactions = pd.DataFrame(
        {"user_id": ["7", "7", "8", "9"], "item_id": ["a", "b", "a", "c"], "timestamp": pd.to_datetime([1, 2, 3, 4])}
    )
    users = pd.DataFrame(
        {"user_id": ["7", "8", "9"], "age": [30, 40, 50], "Email": ["x@y", "z@w", "q@r"], "zip_code": ["1", "2", "3"]}
    )
    return Dataset(name="toy", interactions=interactions, users=users)


def test_pseudonyms_are_keyed_stable_and_hide_the_id() -> None:
    first = pseudonymise_id("42", KEY)
    assert first == pseudonymise_id("42", KEY)
    assert first != pseudonymise_id("42", b"another key of enough length")
    assert first != pseudonymise_id("43", KEY)
    assert first.startswith("p_") and len(first) == 34 and "42" not in first[2:6]
    column = pseudonymise_ids(pd.Series([42, 43, 42]), KEY)
    assert column.tolist() == [first, pseudonymise_id("43", KEY), first]


def test_a_missing_id_stays_missing_when_pseudonymised() -> None:
    # It became the pseudonym of "nan": one made-up user, trained on and published, that validation (after
    # ingest) no longer saw as a missing id. A real user called "nan" kept their own pseudonym apart from it.
    ids = pd.Series(["7", None, "nan", None], dtype="str")
    column = pseudonymise_ids(ids, KEY)
    assert column.isna().tolist() == [False, True, False, True]
    assert column[2] == pseudonymise_id("nan", KEY) and column[0] == pseudonymise_id("7", KEY)


def test_a_missing_or_short_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEFAULT_KEY_ENV, raising=False)
    config = PrivacyConfig(pseudonymise_users=True)
    with pytest.raises(DataError, match=f"{DEFAULT_KEY_ENV} is unset"):
        apply_privacy(_dataset(), config, set())
    monkeypatch.setenv(DEFAULT_KEY_ENV, "short")
    with pytest.raises(DataError, match="shorter than 16"):
        apply_privacy(_dataset(), config, set())


def test_personal_columns_are_dropped_unless_kept() -> None:
    config = PrivacyConfig()
    assert personal_columns(["user_id", "age", "Email", "zip_code"], config) == ["Email", "zip_code"]
    protected, summary = apply_privacy(_dataset(), config, set())
    assert protected.users is not None and protected.users.columns.tolist() == ["user_id", "age"]
    assert summary["dropped_columns"] == ["Email", "zip_code"]
    kept, _ = apply_privacy(_dataset(), PrivacyConfig(keep_personal_columns=["zip_code"]), set())
    assert kept.users is not None and "zip_code" in kept.users.columns and "Email" not in kept.users.columns


def test_personal_columns_of_the_events_are_dropped_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # They stayed next to the pseudonymised id, and were cached with it in Prefect's result storage.
    monkeypatch.setenv("RECFORGE_PSEUDONYM_KEY", "k" * 32)
    dataset = _dataset()
    events = dataset.interactions.assign(email="alice@example.com", IP_Address="10.0.0.7", device="phone")
    config = PrivacyConfig(pseudonymise_users=True, personal_columns=["email", "ip_address", "rating", "timestamp"])
    protected, summary = deidentify(dataclasses.replace(dataset, interactions=events), config)
    assert protected.interactions.columns.tolist() == [*dataset.interactions.columns, "device"]
    assert summary["dropped_columns"] == ["Email", "interactions.email", "interactions.IP_Address"]
    assert protected.interactions["user_id"].str.startswith("p_").all()
    kept, _ = deidentify(
        dataclasses.replace(dataset, interactions=events), PrivacyConfig(keep_personal_columns=["email"])
    )
    assert "email" in kept.interactions.columns and "IP_Address" not in kept.interactions.columns


def test_pseudonymised_and_erased_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEFAULT_KEY_ENV, KEY.decode())
    erased = {pseudonymise_id("7", KEY)}
    protected, summary = apply_privacy(_dataset(), PrivacyConfig(pseudonymise_users=True), erased)
    assert summary == {"pseudonymised": True, "dropped_columns": ["Email", "zip_code"], "erased_users": 1,
                       "erased_events": 2}  # fmt: skip
    assert set(protected.interactions["user_id"]) == {pseudonymise_id("8", KEY), pseudonymise_id("9", KEY)}
    assert protected.users is not None and len(protected.users) == 2
    assert not protected.interactions["user_id"].isin(["7", "8", "9"]).any()


def test_validation_names_the_source_rows_after_an_erasure() -> None:
    from recforge.privacy import erase
    from recforge.validation import validate_dataset

    dataset = _dataset()
    stamps = pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03", "2031-01-01"], utc=True)
    dataset.interactions["timestamp"] = stamps  # the fourth event (row 3) lies ahead of the clock
    kept, _ = erase(dataset, {"7"})  # rows 0 and 1 go
    report = validate_dataset(kept, min_interactions=0, now=datetime(2030, 1, 1, tzinfo=UTC))
    [ahead] = [o for o in report.outcomes if o.column == "timestamp" and o.unexpected_count and o.severity == "warning"]
    assert ahead.rows == (3,), ahead.explain()
    assert "(row 3)" in ahead.explain()
    # What cleaning drops stays positional: the second of the two rows left.
    assert [rows.tolist() for rows in report.rows_to_drop["interactions"].values()] == [[1]]


def test_ids_longer_than_the_tables_hold_are_refused_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    # VARCHAR(200): PostgreSQL refused them at the publish, after training and its retries, on either database.
    # Characters, not bytes (200 "é" fit); user ids count as published, so a pseudonym's length when pseudonymised.
    long_user, long_item = "u" * 201, "é" * 201
    base = _dataset()
    fits = base.interactions.assign(item_id=["é" * 200, "b", "a", "c"])
    apply_privacy(dataclasses.replace(base, interactions=fits), PrivacyConfig(), set())
    items_too_long = dataclasses.replace(base, source="events.csv", interactions=fits.assign(item_id=[long_item] * 4))
    with pytest.raises(DataError, match=r"events\.csv: interactions column 'item_id' holds 4 id\(s\) longer than 200"):
        apply_privacy(items_too_long, PrivacyConfig(), set())
    users = base.users.assign(user_id=["7", "8", long_user])
    users_too_long = dataclasses.replace(
        base, interactions=fits.assign(user_id=["7", "7", "8", long_user]), users=users
    )
    with pytest.raises(
        DataError, match=r"interactions column 'user_id' holds 1 id.*\(201 characters\).*--pseudonymise"
    ):
        apply_privacy(users_too_long, PrivacyConfig(), set())
    monkeypatch.setenv(DEFAULT_KEY_ENV, KEY.decode())
    protected, _ = apply_privacy(users_too_long, PrivacyConfig(pseudonymise_users=True), set())
    assert protected.interactions["user_id"].iloc[-1] == pseudonymise_id(long_user, KEY)


def _recs(model: str, users: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(model, u, r + 1, item, 1.0 / (r + 1)) for u, items in users.items() for r, item in enumerate(items)]
    return pd.DataFrame(rows, columns=["model", "user_id", "rank", "item_id", "score"])


def test_store_forget_deletes_rows_and_records_the_erasure(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'rf.db'}")
    assert store.erased_users() == set()  # no database yet
    store.create_schema()
    with pytest.raises(ValueError, match="user id of 201 characters: ids are at most 200"):
        store.forget_user("u" * 201)  # PostgreSQL failed with a raw StringDataRightTruncation
    run_id = store.start_run(dataset="toy", source="toy", as_of=AS_OF, parameters={}, flow_run_id=None)
    store.publish(run_id, AS_OF, _recs("pop", {"u1": ["a", "b"], "u2": ["a"]}), ChampionDecision("pop", "ndcg", 1, ""))
    features = pd.DataFrame({"user_id": ["u1", "u2"], "events": [3.0, 4.0]})
    store.write_features(run_id, AS_OF, "user", features, "user_id")

    assert store.forget_user("u1", note="ticket 12") == {"recommendations": 2, "features": 1}
    assert store.read_recommendations("u1").empty and len(store.read_recommendations("u2")) == 1
    assert store.erased_users() == {"u1"}
    with store.engine.connect() as conn:
        first = conn.execute(sa.text("SELECT requested_at FROM erasures")).scalar_one()
    assert store.forget_user("u1") == {"recommendations": 0, "features": 0}  # twice is harmless
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT user_id, rows_deleted, note, requested_at FROM erasures")).all()
    # The first request's time and note stay (an audit trail), the counts add up.
    assert [(user, json.loads(counts), note, at) for user, counts, note, at in rows] == [
        ("u1", {"recommendations": 2, "features": 1}, "ticket 12", first)
    ]
    store.dispose()


def test_forget_refuses_an_empty_id_and_points_out_a_padded_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    monkeypatch.delenv(DEFAULT_KEY_ENV, raising=False)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    store = Store(url)
    store.create_schema()
    run_id = store.start_run(dataset="toy", source="toy", as_of=AS_OF, parameters={}, flow_run_id=None)
    store.publish(run_id, AS_OF, _recs("pop", {"196": ["a", "b"]}), ChampionDecision("pop", "ndcg", 1, ""))
    # An erasure of "" matched nobody, yet was recorded for good and reported as done.
    assert main(["forget", "--user", " ", "--db-url", url]) == 2
    assert "forget needs a user id; got an empty one" in capsys.readouterr().err
    assert store.erased_users() == set()
    # A pasted id with a space while the id without it has rows: refused, nothing recorded (the erasure of " 196"
    # was recorded for good before, matching nobody).
    assert main(["forget", "--user", " 196", "--db-url", url]) == 2
    err = capsys.readouterr().err
    assert "no published rows hold ' 196'" in err and "'196' has some: did you mean it? Nothing was erased." in err
    assert len(store.read_recommendations("196")) == 2 and store.erased_users() == set()
    # An id with no rows in any form (a parquet or SQL source may hold padded ids): erased as given, with the hint.
    assert main(["forget", "--user", " 7 ", "--db-url", url]) == 0
    said = capsys.readouterr().out
    assert "no published rows of this user were found" in said and "did you mean '7'?" in said, said
    assert store.erased_users() == {" 7 "}
    # A padded id that is published as such is erased like any other.
    store.publish(run_id, AS_OF, _recs("pop", {" 8": ["a"], "196": ["a", "b"]}), ChampionDecision("pop", "ndcg", 1, ""))
    assert main(["forget", "--user", " 8", "--db-url", url]) == 0
    assert "deleted 1 recommendation" in capsys.readouterr().out
    assert store.erased_users() == {" 7 ", " 8"} and len(store.read_recommendations("196")) == 2
    # Without the key, --pseudonymised is a setting this command lacks, not a problem of the data (it said so, exit 1).
    assert main(["recommendations", "--user", "196", "--pseudonymised", "--db-url", url]) == 2
    assert "--pseudonymised needs the key" in capsys.readouterr().err
    store.dispose()


def _stored_payload(path: Path) -> bytes:
    """A file of Prefect's result storage, its result decoded when it is a result record."""
    raw = path.read_bytes()
    try:
        return raw + base64.b64decode(json.loads(raw)["result"])
    except (ValueError, KeyError, TypeError):
        return raw


def test_purge_deletes_only_recforge_cached_stage_results(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from tasks.caching import cache_key_prefix, purge_cached_results

    names = [f"{cache_key_prefix(stage)}{'a' * 64}" for stage in ("ingest", "validate", "prepare")]
    kept = ["0e065e60f1b24833240082bc13171d3a", "recforge-other-1", "notes.txt"]  # other flows' results, other files
    for name in names + kept:
        (tmp_path / name).write_text("x")
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path}):
        purged = purge_cached_results()
        assert (purged.folder, purged.deleted, purged.unreachable) == (tmp_path, 3, None)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
        assert purge_cached_results().deleted == 0
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "absent"}):
        assert purge_cached_results().deleted == 0


def _texts(url: str) -> str:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        tables = [t for t in sa.inspect(conn).get_table_names() if t != "erasures"]
        text = "\n".join(pd.read_sql(sa.text(f"SELECT * FROM {t}"), conn).to_csv() for t in tables)
    engine.dispose()
    return text


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_pseudonymised_run_then_forget_removes_the_user_now_and_from_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import get_current_settings

    from flows.cli import main
    from flows.recommend import recommend

    monkeypatch.setenv(DEFAULT_KEY_ENV, KEY.decode())
    url = f"sqlite:///{tmp_path / 'rf.db'}"
    source = {"kind": "csv", "interactions": str(GOOD / "interactions.csv"), "users": str(GOOD / "users.csv")}
    config = RunConfig(
        source=source,
        as_of=AS_OF,
        models=["popularity", "item_knn"],
        top_n=5,
        output_dir=str(tmp_path / "var"),
        privacy=PrivacyConfig(pseudonymise_users=True),
    )
    recommend(config=config, db_url=url)
    raw_users = set(pd.read_csv(GOOD / "interactions.csv", dtype=str)["user_id"])
    store = Store(url)
    published = pd.read_sql(sa.text("SELECT DISTINCT user_id FROM recommendations"), store.engine)["user_id"]
    assert set(published) == {pseudonymise_id(u, KEY) for u in raw_users}
    assert not set(published) & raw_users

    storage = Path(get_current_settings().results.local_storage_path)
    gone = pseudonymise_id("1", KEY)
    assert any(gone.encode() in _stored_payload(path) for path in storage.glob("recforge-*")), "nothing cached"
    # Without the key the pseudonym cannot be computed: the raw form is erased, and the command says what is left.
    monkeypatch.delenv(DEFAULT_KEY_ENV)
    assert main(["forget", "--user", "1", "--db-url", url]) == 2
    assert "without $RECFORGE_PSEUDONYM_KEY the pseudonym of '1' cannot be computed" in capsys.readouterr().err
    assert store.erased_users() == {"1"} and gone in set(published)
    assert main(["forget", "--user", "1", "--pseudonymised", "--db-url", url]) == 2  # asked for, and no key
    assert "--pseudonymised needs the key" in capsys.readouterr().err
    # With the key, every form goes: the raw id and its pseudonym (a run with the other setting, before or after,
    # stored the other; forgetting one form left the other's rows readable, and the user came back).
    monkeypatch.setenv(DEFAULT_KEY_ENV, KEY.decode())
    assert main(["forget", "--user", "1", "--db-url", url, "--note", "request 7"]) == 0
    said = capsys.readouterr().out
    assert (
        "forgot user '1' (the id itself and its pseudonym)" in said
        and f"cached stage result(s) under {storage}" in said
    )
    assert store.erased_users() == {"1", gone}
    # The cached ingest/validate/prepare results held the user's events: none is left on this machine.
    assert not any(gone.encode() in _stored_payload(path) for path in storage.rglob("*") if path.is_file())
    assert main(["recommendations", "--user", "1", "--pseudonymised", "--db-url", url]) == 1
    assert "this user was erased (`recforge forget`" in capsys.readouterr().err

    summary = recommend(config=config.model_copy(update={"as_of": datetime(2022, 1, 2, tzinfo=UTC)}), db_url=url)
    assert summary["status"] == "completed"
    assert gone not in _texts(url)  # not in the new run's rows, features or metrics either
    capsys.readouterr()
    # By the raw id the tables hold nothing: the answer says why (it said only "check the user id").
    assert main(["recommendations", "--user", "2", "--db-url", url]) == 1
    assert "or add --pseudonymised: the runs there pseudonymise user ids" in capsys.readouterr().err
    assert main(["recommendations", "--user", "2", "--pseudonymised", "--db-url", url, "--explain"]) == 0
    shown = capsys.readouterr().out
    assert "strategy" in shown and "reason" in shown and pseudonymise_id("2", KEY) in shown
    store.dispose()


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_cached_ingest_results_hold_no_raw_ids_or_personal_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the ingest task leaves in Prefect's result storage (for reruns) is already de-identified."""
    from prefect.settings import get_current_settings

    from flows.recommend import recommend
    from tasks.ingest import _privacy_key

    monkeypatch.setenv(DEFAULT_KEY_ENV, KEY.decode())
    events = pd.read_csv(GOOD / "interactions.csv", dtype=str)
    events["user_id"] = "raw-user-" + events["user_id"]
    events.to_csv(tmp_path / "events.csv", index=False)
    users = pd.DataFrame({"user_id": events["user_id"].unique()})
    users["Email"] = "secret-" + users["user_id"] + "@example.com"
    users["age"] = 30
    users.to_csv(tmp_path / "users.csv", index=False)
    source = {"kind": "csv", "interactions": str(tmp_path / "events.csv"), "users": str(tmp_path / "users.csv")}
    privacy = PrivacyConfig(pseudonymise_users=True)
    config = RunConfig(
        source=source, as_of=AS_OF, models=["popularity"], top_n=3, output_dir=str(tmp_path / "var"), privacy=privacy
    )
    storage = Path(get_current_settings().results.local_storage_path)
    before = {p: p.stat().st_mtime_ns for p in storage.rglob("*") if p.is_file()}
    recommend(config=config, db_url=f"sqlite:///{tmp_path / 'rf.db'}")

    written = [p for p in storage.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns]
    assert written, "the run cached nothing: the test would prove nothing"
    payloads = [base64.b64decode(json.loads(path.read_bytes())["result"]) for path in written]
    assert any(b"p_" in payload for payload in payloads)  # the pseudonymised data set is there, readable
    for path, payload in zip(written, payloads, strict=True):
        assert b"raw-user-" not in payload and b"secret-" not in payload, path
    # A new key or new privacy settings are another cache entry, never the old pseudonyms; the key stays hidden.
    first = _privacy_key(privacy)
    assert first != _privacy_key(PrivacyConfig()) and KEY.decode() not in first
    monkeypatch.setenv(DEFAULT_KEY_ENV, "another key, long enough")
    assert _privacy_key(privacy) != first
