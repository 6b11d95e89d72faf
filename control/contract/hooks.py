"""Schemathesis hooks for the contract run (sfu/tests/contract.rs).

An Idempotency-Key binds one request: the same key with a different body
is refused with 422 by design (`control/API.md`). Schemathesis draws keys
from a small space and reuses them across unrelated requests, so each
generated request gets a fresh key; the replay rules have their own tests
(`sfu/tests/calls.rs`, `sfu/tests/abuse.rs`).
"""

import re
import uuid

import schemathesis

# The contract's HeaderId: a key that is valid stays valid (a fresh one), an
# invalid one (a negative test) is left as generated.
VALID_KEY = re.compile(r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")


@schemathesis.hook
def map_headers(context, headers):
    key = (headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and len(key) <= 128 and VALID_KEY.match(key):
        headers["Idempotency-Key"] = str(uuid.uuid4())
    return headers
