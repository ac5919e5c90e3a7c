"""The README's `verifyAurum` (the Node snippet a receiver copies), run by Node 20 as
written: it accepts what our sender signs and answers false — never throws — for anything
else. It threw a TypeError on a request without the signature header, which in a Next.js
route is a 500 that our sender then retries (#27)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from aurum_ml.pipeline.webhooks import signature_header

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-readme"
BODY = '{"job_id":"j-1","state":"done"}'

DRIVER = """
import { verifyAurum } from "./verify.mjs";
const cases = JSON.parse(process.argv[2]);
const out = {};
for (const [name, c] of Object.entries(cases)) {
  const body = c.buffer ? Buffer.from(c.body, "utf8") : c.body;
  try {
    out[name] = verifyAurum(body, c.header === null ? undefined : c.header, c.secret);
  } catch (e) {
    out[name] = `threw ${e.name}: ${e.message}`;
  }
}
console.log(JSON.stringify(out));
"""


def _snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```js\n(.*?)```", readme, re.S)
    (found,) = [b for b in blocks if "export function verifyAurum" in b]
    return found


def test_the_readme_verifier_accepts_ours_and_never_throws(tmp_path):
    node = shutil.which("node")
    assert node, "Node is on every machine (README: TypeScript and Node checks)"
    (tmp_path / "verify.mjs").write_text(_snippet())
    (tmp_path / "driver.mjs").write_text(DRIVER)
    good = signature_header(SECRET, BODY.encode())
    old = signature_header(SECRET, BODY.encode(), int(time.time()) - 1000)
    t = good.split(",")[0]
    cases = {
        "ours": {"body": BODY, "header": good, "secret": SECRET},
        "ours_as_a_buffer": {"body": BODY, "header": good, "secret": SECRET, "buffer": True},
        "no_header": {"body": BODY, "header": None, "secret": SECRET},
        "empty_header": {"body": BODY, "header": "", "secret": SECRET},
        "garbage": {"body": BODY, "header": "garbage", "secret": SECRET},
        "not_numbers": {"body": BODY, "header": "t=abc,v1=zz", "secret": SECRET},
        "short_signature": {"body": BODY, "header": f"{t},v1=abcd", "secret": SECRET},
        "another_secret": {"body": BODY, "header": good, "secret": "another"},
        "no_secret": {"body": BODY, "header": good, "secret": None},
        "tampered_body": {
            "body": BODY.replace("done", "fail"),
            "header": good,
            "secret": SECRET,
        },  # fmt: skip
        "too_old": {"body": BODY, "header": old, "secret": SECRET},
        "no_body": {"body": None, "header": good, "secret": SECRET},
    }
    run = subprocess.run(
        [node, str(tmp_path / "driver.mjs"), json.dumps(cases)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    answers = json.loads(run.stdout)
    assert answers == {name: name.startswith("ours") for name in cases}, answers
