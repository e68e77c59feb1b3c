"""Draw docs/images/compare-report.png: a realistic compare report, rendered by headless Chromium.

    python scripts/report_screenshot.py            # write docs/images/compare-report.png
    python scripts/report_screenshot.py OUT.png    # write it elsewhere

The data is made here, not sent to a model: 200 tickets of data/tickets.csv (repeated), gold
labels from keywords, and three variants that answer them right with a fixed chance each
(seeded), scored by pipeline.evaluate as `pipeline compare` scores them. Needs `chromium` on
PATH (`make chromium`). tests/test_report.py renders the same data in the same browser.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.agreement import agreement, cohen_kappa  # noqa: E402
from pipeline.comparereport import compare_report  # noqa: E402
from pipeline.evaluate import score  # noqa: E402

OUT = ROOT / "docs" / "images" / "compare-report.png"
WINDOW = (1280, 2000)  # the browser test's window
SHOT_WINDOW = (1280, 2540)  # the docs image: the whole page, nothing cut off
LABELS = ["billing", "bug", "feature_request", "account", "other"]
KEYWORDS = {  # the first label whose word a ticket holds is its gold label
    "billing": ("charge", "refund", "invoice", "paid", "payment", "price", "subscription"),
    "bug": ("crash", "error", "broken", "fails", "doesn't", "does not", "bug", "blank"),
    "feature_request": ("would be great", "would love", "please add", "feature", "option to"),
    "account": ("sign in", "password", "log in", "login", "account", "email address"),
}
VARIANTS = [  # name, model, accuracy, invalid, failed, $ per 1M prompt / completion tokens
    ("flash-lite", "gemini-2-5-flash-lite-preview-09-2025", 0.84, 0.03, 0.01, 0.10, 0.40),
    ("mini", "gpt-4o-mini", 0.90, 0.01, 0.0, 0.15, 0.60),
    ("sonnet", "claude-sonnet-4-20250514", 0.95, 0.0, 0.005, 3.0, 15.0),
]
SAMPLE, TABLE_ROWS, SHOWN = 200, 10_000, 12


def gold_label(text: str) -> str:
    lower = text.lower()
    return next((k for k, words in KEYWORDS.items() if any(w in lower for w in words)), "other")


def realistic_compare() -> dict[str, Any]:
    """The JSON `pipeline compare` would print for three variants on 200 tickets."""
    with (ROOT / "data" / "tickets.csv").open(encoding="utf-8") as file:
        tickets = [t for t in csv.DictReader(file) if t["text"]]
    rows = [tickets[i % len(tickets)] for i in range(SAMPLE)]
    gold = [gold_label(t["text"]) for t in rows]
    rng = random.Random(7)
    answers: dict[str, list[str | None]] = {}
    variants = []
    for name, model, right, invalid, failed, p_in, p_out in VARIANTS:
        given: list[str | None] = []
        statuses = []
        for truth in gold:
            roll = rng.random()
            if roll < failed:
                given.append(None), statuses.append("failed")
            elif roll < failed + invalid:
                given.append(None), statuses.append("invalid")
            else:
                wrong = rng.choice([label for label in LABELS if label != truth])
                given.append(truth if rng.random() < right else wrong), statuses.append("ok")
        answers[name] = given
        prompt, completion = SAMPLE * 96 + rng.randrange(500), SAMPLE * 3 + rng.randrange(50)
        cost = (prompt * p_in + completion * p_out) / 1e6
        n_invalid, n_failed = statuses.count("invalid"), statuses.count("failed")
        variants.append(
            {
                "name": name,
                "overrides": [f"model.name={model}"],
                "model": model,
                "rows": SAMPLE,
                "answered": statuses.count("ok"),
                "invalid": n_invalid,
                "failed": n_failed,
                "invalid_rate": round(n_invalid / SAMPLE, 4),
                "failed_rate": round(n_failed / SAMPLE, 4),
                "requests_sent": SAMPLE + n_invalid,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "cost_usd": round(cost, 8),
                "projected_cost_usd": round(cost * TABLE_ROWS / SAMPLE, 8),
                "projected_batch_cost_usd": round(cost * TABLE_ROWS / SAMPLE / 2, 8),
                "latency_p50_s": round(0.3 + 0.5 * p_in + rng.random() * 0.1, 4),
                "latency_p95_s": round(0.9 + 1.1 * p_in + rng.random() * 0.4, 4),
                "evaluation": score("label", given, gold, statuses, labels=LABELS).to_dict(),
                "stopped": None,
                "exit_code": 1 if n_invalid + n_failed else 0,
            }
        )
    names = list(answers)
    pairs = [
        {
            "a": a,
            "b": b,
            "agreement": round(agreement(answers[a], answers[b]) or 0, 4),
            "kappa": round(cohen_kappa(answers[a], answers[b]) or 0, 4),
        }
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    differ = [i for i in range(SAMPLE) if len({answers[n][i] for n in names}) > 1]
    first = {rows[i]["ticket_id"]: i for i in reversed(differ)}  # each ticket shown once
    shown = [
        {
            "row": i + 1,
            "input": {c: rows[i][c] for c in ("ticket_id", "customer", "channel", "text")},
            "gold": gold[i],
            "answers": {n: answers[n][i] for n in names},
        }
        for i in sorted(first.values())[:SHOWN]
    ]
    return {
        "config": "configs/classify.yaml",
        "sample": {"rows": SAMPLE, "how": "random", "seed": 7},
        "table_rows": TABLE_ROWS,
        "gold": "true_label",
        "kind": "label",
        "variants": variants,
        "agreement": pairs,
        "disagreements": {
            "columns": ["ticket_id", "customer", "channel", "text"],
            "rows": shown,
            "total": len(differ),
        },
        "generated": "2025-06-02 09:30 UTC",
    }


def chromium(
    page: Path, *args: str, window: tuple[int, int] = WINDOW, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on a local page, in a throwaway profile and HOME."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as home:
        command = [
            shutil.which("chromium") or "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={window[0]},{window[1]}",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={home}/profile",
            *args,
            page.resolve().as_uri(),
        ]
        env = {**os.environ, "HOME": home}
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "compare.html"
        page.write_text(compare_report(realistic_compare()), encoding="utf-8")
        done = chromium(page, f"--screenshot={out.resolve()}", window=SHOT_WINDOW)
    if done.returncode or not out.exists():
        print(done.stderr, file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
