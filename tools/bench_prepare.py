"""Peak memory and tokens/s of `llm-jax data prepare` on a big corpus, now and before.

    python tools/make_big_corpus.py /tmp/big_corpus --mb 200
    git worktree add /tmp/llmjax_before <commit>          # the code to compare against
    nice -n 10 python tools/bench_prepare.py --corpus '/tmp/big_corpus/*.txt' \
        --tokenizer /tmp/bench.model --before /tmp/llmjax_before --workers 1,2

Each run is a fresh `python -m llm_jax.cli data prepare` (imports included) into an empty
cache folder, with a fixed tokenizer (`--tokenizer`, so tokenization alone is compared;
without it each run trains one first), then the same command again to time opening the
finished cache. Peak RSS is sampled every 50 ms over the whole process tree (the sum: workers
included) and for the largest single process. `load` is the 1-minute load average when
the run starts: on a busy machine wall time is partly waiting for a core, which `cpu s`
(user + system seconds of the whole tree) and `Mtok/cpu-s` are not.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from llm_jax import cli
from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def _sample(proc: subprocess.Popen) -> tuple[float, float]:
    """Wait for `proc`; peak RSS in MB of its whole tree (sum) and of its largest process."""
    tree_peak = one_peak = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = [p.memory_info().rss for p in [parent, *parent.children(recursive=True)]]
        except psutil.Error:  # a process ended between listing and reading
            continue
        tree_peak, one_peak = max(tree_peak, sum(rss)), max(one_peak, max(rss))
        time.sleep(0.05)
    return tree_peak / 2**20, one_peak / 2**20


def _tokens(stdout: str) -> int:
    """Train + val tokens from the statistics table `data prepare` prints."""
    rows = [line.split() for line in stdout.splitlines()]
    return sum(int(r[3].replace(",", "")) for r in rows if r and r[0] in ("train", "val"))


def _cpu_of_children() -> float:
    """User + system seconds of finished children (workers included once reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(tree: Path, flags: list[str]) -> tuple[float, float, str, float, float]:
    """Wall seconds, CPU seconds, stdout, peak RSS of the tree and of one process (MB)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-m", "llm_jax.cli", "data", "prepare", *flags]
    start, cpu = time.perf_counter(), _cpu_of_children()
    # cwd: `python -m` puts the current folder first on sys.path, ahead of PYTHONPATH.
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tree_mb, one_mb = _sample(proc)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode == 2:  # its one-line `error: ...`: the corpus or flags are wrong
        message = err.decode().strip().splitlines()[-1].removeprefix("error: ")
        raise UsageError(f"data prepare in {tree} failed: {message}")
    if proc.returncode:  # a crash of the code under test: a bug, with its traceback
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.decode()[-2000:]}")
    return wall, _cpu_of_children() - cpu, out.decode(), tree_mb, one_mb


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line switches."""
    p = args_lib.parser("tools/bench_prepare.py", __doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="data.path: a glob of .txt files")
    p.add_argument("--tokenizer", default="", help="a .model file (data.tokenizer_path)")
    p.add_argument(
        "--before", type=args_lib.existing_dir, help="a checkout of the code to compare against"
    )
    p.add_argument(
        "--workers",
        type=args_lib.comma_list(args_lib.nonnegative_int),
        default="1,2",
        help="data.workers values to run now",
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Run each prepare (and reopen) and print a row for each."""
    args = parse_args(argv)
    base = [
        "--config.data.source=files",
        f"--config.data.path={args.corpus}",
        f"--config.data.tokenizer_path={args.tokenizer}",
    ]
    runs = [("before", args.before, [])] if args.before else []
    runs += [("now", ROOT, [f"--config.data.workers={w}"]) for w in args.workers]
    print(
        f"{'code':<8}{'flags':<11}{'load':>6}{'wall s':>8}{'cpu s':>8}{'Mtokens':>9}"
        f"{'Mtok/s':>8}{'Mtok/cpu-s':>11}{'peak MB':>9}{'max 1 MB':>10}{'reopen s':>10}"
    )
    for label, tree, extra in runs:
        cache = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
        flags = [*base, *extra, f"--config.data.cache_dir={cache}"]
        try:
            load = os.getloadavg()[0]
            wall, cpu, out, tree_mb, one_mb = _run(tree, flags)
            reopen = _run(tree, flags)[0]
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        tokens = _tokens(out)
        name = extra[0].split(".")[-1] if extra else ""
        print(
            f"{label:<8}{name:<11}{load:>6.2f}{wall:>8.1f}{cpu:>8.1f}{tokens / 1e6:>9.1f}"
            f"{tokens / 1e6 / wall:>8.2f}{tokens / 1e6 / cpu:>11.2f}{tree_mb:>9.0f}"
            f"{one_mb:>10.0f}{reopen:>10.1f}",
            flush=True,
        )


if __name__ == "__main__":
    cli.run_tool(main)
