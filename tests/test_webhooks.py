import json
import time

import pytest

from ref2img.webhooks import WebhookVerificationError, signed_headers, signing_key, verify

SECRET = "sk_test_secret"
BODY = json.dumps({"task_id": "t1", "status": 3}).encode()


def test_valid_callback_verifies():
    headers = signed_headers("msg_t1", BODY, signing_key(SECRET))
    assert verify(headers, BODY, SECRET) == {"task_id": "t1", "status": 3}


def test_tampered_body_or_wrong_secret_fails():
    headers = signed_headers("msg_t1", BODY, signing_key(SECRET))
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(headers, BODY.replace(b"3", b"4"), SECRET)
    with pytest.raises(WebhookVerificationError):
        verify(headers, BODY, "sk_other")
    with pytest.raises(WebhookVerificationError):
        verify({**headers, "webhook-id": "msg_t2"}, BODY, SECRET)


def test_stale_timestamp_fails():
    headers = signed_headers("msg_t1", BODY, signing_key(SECRET), now=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError, match="away from now"):
        verify(headers, BODY, SECRET)


def test_missing_headers_fail():
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify({}, BODY, SECRET)


def test_rotation_list_accepts_any_matching_signature():
    headers = signed_headers("msg_t1", BODY, signing_key(SECRET))
    headers["webhook-signature"] = "v1,bm90LWl0 " + headers["webhook-signature"]
    assert verify(headers, BODY, SECRET)["task_id"] == "t1"
