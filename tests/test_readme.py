"""README.md's shell examples, run as pasted, in order, against a real `incentive serve`.

Every ```sh block runs unless the line before it is ``<!-- readme: not run (reason) -->``.
The blocks share one bash session (``set -euo pipefail``), as a reader pasting them one after
another would; ``BASE`` points at the test's server. What they did is then checked from the
outside: the purchase, alice's points, the partner's feedback.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from sqlalchemy import func, select

from incentive import demo
from incentive.auth.models import User
from incentive.campaigns.models import Campaign
from incentive.coupons.models import CouponRedemption
from incentive.data_models.models import ArchivedRecord
from incentive.db import Database
from incentive.flash_sales.models import Purchase
from incentive.join_codes.models import CampaignMerchant, JoinCode
from incentive.ledger.models import Account
from incentive.points_files.format import Header, write_points_file
from incentive.referrals.models import Referral
from incentive.rewards.models import RewardGrant
from incentive.sharing.models import Share, ShareConversion, ShareVisit
from tests.points_files.kit import NOW
from tests.points_files.test_crypto import _kill_agent
from tests.servers import running_server

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?:^(<!-- readme: not run \([^)]+\) -->)\n)?^```sh\n(.*?)^```", re.M | re.S)


def readme_examples() -> list[str]:
    return [body for skip, body in BLOCK.findall(README.read_text()) if not skip]


def test_the_readme_has_runnable_examples_and_says_why_others_are_not_run() -> None:
    text = README.read_text()
    assert len(readme_examples()) >= 6
    assert text.count("```sh") == len(BLOCK.findall(text)), "an sh block the test cannot parse"


async def _points(db: Database, username: str, asset: str = "POINTS") -> int:
    async with db.unit_of_work() as s:
        user_id = await s.scalar(select(User.id).where(User.username == username))
        balance = await s.scalar(
            select(func.coalesce(func.sum(Account.balance), 0)).where(
                Account.owner_type == "user", Account.owner_id == user_id, Account.asset == asset
            )
        )
        return int(balance or 0)


async def test_readme_examples_run_as_pasted(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    await demo.load_if_empty(db)
    before = await _points(db, "alice")
    work, data = tmp_path / "work", tmp_path / "data"
    work.mkdir()
    data.mkdir()
    with (work / "points.txt").open("wb") as out:  # the partner's own file
        write_points_file(out, Header("ACME", 1, NOW), [("r1", "alice", 250, NOW, "readme")])
    script = "set -euo pipefail\n" + "\n".join(readme_examples())
    async with running_server(data, database_url) as server:
        env = {
            **server.env,
            "BASE": server.base_url,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                script,
                cwd=work,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
        finally:
            for home in (work / "acme-gnupg", data / "points_files" / "gnupg"):
                _kill_agent(home)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-6000:]
        assert "unhandled error" not in server.log()
    # The feedback the partner decrypted credits its one record; alice got exactly those
    # points and the reward campaign's 500 + 50, and exactly one purchase was recorded.
    assert re.search(r"^R\|r1\|alice\|250\|OK\|", text, re.M), text[-3000:]
    assert await _points(db, "alice") == before + 250 + 500 + 50 + 100  # + the referral
    assert await _points(db, "bob") == 20
    # The payment's 2 % came to alice and half of it went back with the half refund.
    assert await _points(db, "alice", "CNY") == 100
    async with db.unit_of_work() as s:
        assert await s.scalar(select(func.count()).select_from(Purchase)) == 1
        # The demo merchant joined the README's campaign with one code; the other two voided.
        assert await s.scalar(select(func.count()).select_from(CampaignMerchant)) == 1
        states = dict(
            (await s.execute(select(JoinCode.status, func.count()).group_by(JoinCode.status))).all()
        )
        assert states == {"used": 1, "void": 2}
        # alice's coupon was redeemed once, at the demo merchant, for its 500 fen.
        redeemed = (await s.execute(select(CouponRedemption))).scalars().all()
        assert [(r.discount_fen, r.undone_at) for r in redeemed] == [(500, None)]
        # Two shares of the shared campaign, alice's with her gift coupon; her visit of the
        # staff's link made her payment its conversion.
        shares = {x.sharer_role: x for x in (await s.execute(select(Share))).scalars()}
        assert sorted(shares) == ["customer", "merchant"]
        assert shares["customer"].coupon_id is not None
        assert shares["merchant"].coupon_refusal == "not-a-customer"
        assert await s.scalar(select(func.count()).select_from(ShareVisit)) == 1
        conversions = (await s.execute(select(ShareConversion))).scalars().all()
        assert [c.share_id for c in conversions] == [shares["merchant"].id]
        # The data model archived one record per campaign.
        archived = await s.scalar(select(func.count()).select_from(ArchivedRecord))
        assert archived == await s.scalar(select(func.count()).select_from(Campaign))
        # bob signed up with alice's invite and paid: one referral, rewarded.
        referrals = (await s.execute(select(Referral))).scalars().all()
        assert [(r.state, r.via) for r in referrals] == [("rewarded", "signup")]
        # alice's two rewards: the first-time one, then the returning one.
        grants = (await s.execute(select(RewardGrant).order_by(RewardGrant.created_at))).scalars()
        assert [(g.user_type, g.reward_code) for g in grants] == [
            ("first_time", "welcome"),
            ("returning", "thanks"),
        ]
