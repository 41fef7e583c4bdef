#!/usr/bin/env python3
"""Talk to `airllm serve` with the official `openai` Python client.

Sends every case of --cases (a JSON list of {"messages", "max_tokens", "stream"}) at once,
one thread per case, greedy (temperature 0), and writes what came back to --out:
[{"text", "finish_reason", "completion_tokens", "prompt_tokens", "stream"}, ...] in case
order, plus the server's /metrics text at the end. It also checks that the client maps the
server's errors: an unknown model raises NotFoundError (404), n=2 raises BadRequestError.

Exit status: 0 when every request succeeded, 1 otherwise (the reason on stderr).
Used by crates/airllm/tests/serve_openai.rs; runnable by hand against any server:
    python3 scripts/openai_client_test.py --base-url http://127.0.0.1:8080/v1 \\
        --model SmolLM2-135M-Instruct.Q4_1 --cases cases.json --out out.json
"""

import argparse
import concurrent.futures
import json
import sys
import urllib.request

import openai


def run_case(client, model, case):
    kwargs = dict(
        model=model,
        messages=case["messages"],
        max_tokens=case["max_tokens"],
        temperature=0,
    )
    if case["stream"]:
        text, finish, usage = [], None, None
        stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
        if usage is None:
            raise RuntimeError("stream_options.include_usage was set but no usage chunk came")
        return {
            "text": "".join(text),
            "finish_reason": finish,
            "completion_tokens": usage.completion_tokens,
            "prompt_tokens": usage.prompt_tokens,
            "stream": True,
        }
    r = client.chat.completions.create(**kwargs)
    return {
        "text": r.choices[0].message.content,
        "finish_reason": r.choices[0].finish_reason,
        "completion_tokens": r.usage.completion_tokens,
        "prompt_tokens": r.usage.prompt_tokens,
        "stream": False,
    }


def check_errors(client, model):
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        raise RuntimeError("an unknown model did not raise")
    except openai.NotFoundError as e:
        assert e.status_code == 404, e
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1, n=2)
        raise RuntimeError("n=2 did not raise")
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
        assert getattr(e, "param", None) == "n", (e.body, getattr(e, "param", None))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--cases", required=True, help="JSON file: list of {messages, max_tokens, stream}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=900.0)
    a = ap.parse_args()

    with open(a.cases) as f:
        cases = json.load(f)
    # No retries: a 429 or 5xx must show up as a failure, not be papered over.
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, timeout=a.timeout, max_retries=0)
    models = [m.id for m in client.models.list()]
    if a.model not in models:
        print(f"/v1/models lists {models}, not {a.model!r}", file=sys.stderr)
        return 1
    check_errors(client, a.model)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(cases)) as pool:
        futures = [pool.submit(run_case, client, a.model, c) for c in cases]
        results, failed = [], False
        for i, fut in enumerate(futures):
            try:
                results.append(fut.result())
            except Exception as e:  # report every failure, then exit 1
                failed = True
                print(f"case {i} failed: {type(e).__name__}: {e}", file=sys.stderr)
                results.append(None)
    root = a.base_url.rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(root + "/metrics", timeout=30) as r:
        metrics = r.read().decode()
    with open(a.out, "w") as f:
        json.dump({"results": results, "metrics": metrics, "openai_version": openai.__version__}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
