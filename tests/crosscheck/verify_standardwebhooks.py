#!/usr/bin/env python3
"""Verifies deliveries captured from hookline with the reference `standardwebhooks` package.

Input (stdin): JSON {"secret": "whsec_...", "deliveries": [{"headers": {...}, "body": "<base64>"}]}.
Every delivery must verify; a tampered copy of each must NOT verify. Exit 0 and print
"verified N" on success; exit 1 with the reason otherwise; exit 3 if the package is missing.
"""
import base64
import json
import sys

try:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
except ImportError as e:  # pragma: no cover
    print(f"standardwebhooks is not installed ({e}); run tests/crosscheck/setup.sh", file=sys.stderr)
    sys.exit(3)


def main() -> int:
    data = json.load(sys.stdin)
    wh = Webhook(data["secret"])
    n = 0
    for d in data["deliveries"]:
        body = base64.b64decode(d["body"])
        headers = d["headers"]
        try:
            wh.verify(body, headers)
        except WebhookVerificationError as e:
            print(f"delivery {headers.get('webhook-id')} failed verification: {e}", file=sys.stderr)
            return 1
        try:
            wh.verify(body + b" ", headers)
            print(f"tampered body of {headers.get('webhook-id')} verified", file=sys.stderr)
            return 1
        except WebhookVerificationError:
            pass
        n += 1
    print(f"verified {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
