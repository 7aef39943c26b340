"""The script a user writes without batcher: the official SDK and a semaphore.

Usage: python bench/naive_sdk.py JOBS.jsonl --base-url URL [--concurrency 64]

Sends every line's prompt with ``AsyncAnthropic`` (its default retries and
back-off) at most ``--concurrency`` at a time, and prints one JSON line:
elapsed seconds, answers, failures. The rate benchmark runs it beside
``batcher run`` against the same simulator settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import anthropic


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--model", default="claude-haiku-4.5")
    args = parser.parse_args()
    with open(args.jobs, encoding="utf-8") as lines:
        prompts = [json.loads(line)["prompt"] for line in lines if line.strip()]
    client = anthropic.AsyncAnthropic(api_key=os.environ["POE_API_KEY"], base_url=args.base_url)
    gate = asyncio.Semaphore(args.concurrency)

    async def ask(prompt: str) -> bool:
        async with gate:
            try:
                await client.messages.create(model=args.model, max_tokens=64,
                                             messages=[{"role": "user", "content": prompt}])
            except anthropic.APIError:
                return False
            return True

    start = time.perf_counter()
    results = await asyncio.gather(*(ask(p) for p in prompts))
    elapsed = time.perf_counter() - start
    await client.close()
    print(json.dumps({"elapsed_s": elapsed, "succeeded": sum(results), "failed": len(results) - sum(results)}))


if __name__ == "__main__":
    asyncio.run(main())
