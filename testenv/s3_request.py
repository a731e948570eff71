#!/usr/bin/env python3
"""One AWS Signature V4 signed request to the testenv S3 server, standard library only.

    testenv/s3_request.py METHOD PATH [BODY_FILE|-]

PATH is path-style and may carry a query: /itbackup-test?list-type=2. The body
(PUT/POST) comes from BODY_FILE, or stdin for '-'. The endpoint, keys and region
come from the variables testenv/env exports (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION), so after `eval "$(testenv/env)"`:

    testenv/s3_request.py GET '/itbackup-test?list-type=2'
    echo hello | testenv/s3_request.py PUT /itbackup-test/hello.txt -
    testenv/s3_request.py GET /itbackup-test/hello.txt

The response body goes to stdout. Exit status: 0 for a 2xx answer, 1 for any
other answer (status and body on stderr), 2 for a usage or connection error.
"""

import datetime
import hashlib
import hmac
import http.client
import os
import sys
import urllib.parse


def quote(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


def sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def canonical_query(query):
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted(pairs))


def signed_headers(method, host, path, query, body, access_key, secret_key, region):
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {
        "host": host,
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
    }
    names = sorted(headers)
    canonical_request = "\n".join(
        [
            method,
            quote(path, safe="/-_.~"),
            query,
            "".join(f"{n}:{headers[n]}\n" for n in names),
            ";".join(names),
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    k = sign(("AWS4" + secret_key).encode(), day)
    k = sign(k, region)
    k = sign(k, "s3")
    k = sign(k, "aws4_request")
    signature = hmac.new(k, string_to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return headers


def main(argv):
    if len(argv) not in (3, 4):
        sys.stderr.write(__doc__)
        return 2
    method, target = argv[1].upper(), argv[2]
    body = b""
    if len(argv) == 4:
        if argv[3] == "-":
            body = sys.stdin.buffer.read()
        else:
            with open(argv[3], "rb") as f:
                body = f.read()
    try:
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        access_key = os.environ["AWS_ACCESS_KEY_ID"]
        secret_key = os.environ["AWS_SECRET_ACCESS_KEY"]
    except KeyError as e:
        sys.stderr.write(f"s3_request: {e.args[0]} is not set (eval \"$(testenv/env)\" first)\n")
        return 2
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    ep = urllib.parse.urlsplit(endpoint)
    if ep.scheme != "http":
        sys.stderr.write(f"s3_request: only http:// endpoints are supported, not {endpoint}\n")
        return 2
    if not target.startswith("/"):
        target = "/" + target
    path, _, query = target.partition("?")
    query = canonical_query(query)
    headers = signed_headers(method, ep.netloc, path, query, body, access_key, secret_key, region)
    url = quote(path, safe="/-_.~")
    if query:
        url += "?" + query
    try:
        conn = http.client.HTTPConnection(ep.hostname, ep.port or 80, timeout=30)
        conn.request(method, url, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as e:
        sys.stderr.write(f"s3_request: {method} {endpoint}{target}: {e}\n")
        return 2
    if 200 <= resp.status < 300:
        sys.stdout.buffer.write(data)
        return 0
    sys.stderr.write(f"s3_request: {method} {target}: HTTP {resp.status} {resp.reason}\n")
    if data:
        sys.stderr.write(data.decode(errors="replace") + "\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
