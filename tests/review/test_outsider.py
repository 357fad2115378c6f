"""Found by an outside review (issue 15): the CLI takes what the API takes."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from incentive.db import Database
from incentive.review.models import SensitiveWord, WordList
from tests.review.test_lists import _cli


async def _lists(db: Database) -> list[str]:
    async with db.unit_of_work() as s:
        return sorted(await s.scalars(select(WordList.name)))


async def test_the_cli_creates_only_lists_the_api_can_name(
    db: Database, cli_env: dict[str, str]
) -> None:
    # The API refuses these names (and its routes could never address such a list); on
    # PostgreSQL the long one was a "database unavailable" error.
    for name in ("Bad Name", "a\tb", "x" * 70, "abc\n", ""):
        code, out, err = await _cli(cli_env, "create", name)
        assert code == 2, (name, out, err)
        assert err.startswith("error: name must match"), err
    assert await _lists(db) == []
    code, out, err = await _cli(cli_env, "create", "ok-list_1")
    assert code == 0, err
    assert await _lists(db) == ["ok-list_1"]


async def test_an_imported_file_s_byte_order_mark_is_no_part_of_its_first_word(
    db: Database, cli_env: dict[str, str], tmp_path: Path
) -> None:
    file = tmp_path / "words.txt"
    file.write_bytes("\ufeff刷单\r\n代购\r\n".encode())
    code, _, err = await _cli(cli_env, "create", "ads")
    assert code == 0, err
    code, out, err = await _cli(cli_env, "import", "ads", str(file))
    assert code == 0, err
    assert json.loads(out)["changed"] == 2
    async with db.unit_of_work() as s:
        assert sorted(await s.scalars(select(SensitiveWord.word))) == ["代购", "刷单"]
    # ... so removing the word as written takes it out.
    code, out, err = await _cli(cli_env, "remove", "ads", "刷单")
    assert (code, json.loads(out)["word_count"]) == (0, 1), err
