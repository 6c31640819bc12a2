"""Ray 2.60 token authentication guards the dashboard's job API, as the README promises.

A local head starts with RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN (HOME points to a
temporary folder, so ~/.ray/auth_token is never read or written). Plain HTTP and Ray's own
JobSubmissionClient are then refused without the token (401), refused with a wrong one (403) and
served with the right one. Run: `pytest tests/ops/test_auth.py -v`.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.ray


def http_status(url: str, token: str | None, method: str = "GET", body: dict | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def token_head(ray_head_factory):
    token = secrets.token_hex(16)
    head = ray_head_factory(auth_mode="token", extra_env={"RAY_AUTH_TOKEN": token})
    return head, token


def test_job_api_needs_the_token(token_head):
    head, token = token_head
    jobs_url = f"{head.dashboard_url}/api/jobs/"
    # A submission that would run if it were let through: the refusals below are what stop it.
    submission = {"entrypoint": "echo should-not-run"}

    assert http_status(jobs_url, token=None) == (401, "Unauthorized: Missing authentication token")
    assert http_status(jobs_url, token=None, method="POST", body=submission)[0] == 401
    assert http_status(jobs_url, token="not-" + token) == (403, "Forbidden: Invalid authentication token")
    assert http_status(jobs_url, token="not-" + token, method="POST", body=submission)[0] == 403

    status, listing = http_status(jobs_url, token=token)
    assert status == 200
    assert json.loads(listing) == []


FORBIDDEN = "AuthenticationError: Authentication failed: Forbidden"
UNAUTHORIZED = "AuthenticationError: Authentication required: Unauthorized"


@pytest.mark.parametrize(
    ("client_env", "expect_ok", "expect_in_error"),
    [
        pytest.param({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "{token}"}, True, None, id="right-token"),
        pytest.param({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong"}, False, FORBIDDEN, id="wrong-token"),
        pytest.param({"RAY_AUTH_MODE": "disabled"}, False, UNAUTHORIZED, id="no-token"),
    ],
)
def test_job_submission_client(token_head, run_ops_script, client_env, expect_ok, expect_in_error):
    head, token = token_head
    env = {k: v for k, v in head.env.items() if k != "RAY_AUTH_TOKEN"}
    env |= {k: v.format(token=token) for k, v in client_env.items()}

    result = run_ops_script("job_client_probe.py", env, [head.dashboard_url], timeout_s=60)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["ok"] is expect_ok, report
    if expect_ok:
        assert report["jobs"] == 0
    else:
        assert expect_in_error in report["error"], report
