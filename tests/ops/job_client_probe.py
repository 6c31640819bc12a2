"""Helper for test_auth.py: list jobs with Ray's JobSubmissionClient, token taken from the environment.

Run as `python job_client_probe.py <dashboard url>`. The client reads RAY_AUTH_MODE and
RAY_AUTH_TOKEN the way `ray job submit` does. Prints one JSON line: {"ok": true, "jobs": N} or
{"ok": false, "error": "..."}.
"""

from __future__ import annotations

import json
import sys

from ray.job_submission import JobSubmissionClient


def main(address: str) -> dict:
    try:
        jobs = JobSubmissionClient(address).list_jobs()
    except Exception as error:  # noqa: BLE001 - the refusal is the result this probe reports
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    return {"ok": True, "jobs": len(jobs)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
