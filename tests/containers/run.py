#!/usr/bin/env python3
"""Runs the container tests against a built image: `python3 tests/containers/run.py IMAGE`.

scripts/container-tests.sh makes the base images, builds the image and calls this; run that.
Two modules, in order: test_image (one container: user, read-only root, health check, outputs,
hot swap, broken version, CPU limit, SIGTERM drain) and test_replicas (deploy/compose.yaml's
three replicas: one publish reaches all, a killed replica and a rolling restart under load fail
no request). A module's containers are made once and shared by its tests; if making them fails,
its tests fail. Everything this run made is removed at the end, whatever happened (also on
Ctrl-C and SIGTERM). Exit status 1 if any test failed.
"""

import signal
import sys
import time
import traceback

import harness as h
import test_image
import test_replicas


def run_module(module, image):
    results = []
    print(f"{module.__name__}:", flush=True)
    started = time.monotonic()
    ctx = None
    try:
        ctx = module.Context(image)
    except Exception:  # noqa: BLE001 - a failed setup fails every test of the module
        detail = traceback.format_exc()
        print(f"  setup FAILED\n{detail}", flush=True)
        return [(t.__name__, False, 0.0) for t in module.TESTS]
    try:
        for test in module.TESTS:
            began = time.monotonic()
            try:
                test(ctx)
                ok = True
                print(f"  ok      {test.__name__} ({time.monotonic() - began:.1f} s)", flush=True)
            except Exception as e:  # noqa: BLE001
                ok = False
                where = "" if isinstance(e, h.TestFailure) else "\n" + traceback.format_exc()
                print(f"  FAILED  {test.__name__} ({time.monotonic() - began:.1f} s): {e}{where}", flush=True)
            results.append((test.__name__, ok, time.monotonic() - began))
    finally:
        ctx.close()
        print(f"  ({time.monotonic() - started:.1f} s)", flush=True)
    return results


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: run.py IMAGE")
    image = sys.argv[1]

    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    h.docker("info", "--format", "{{.ServerVersion}}")   # fails loudly without an engine
    h.docker("image", "inspect", image)
    results = []
    try:
        for module in (test_image, test_replicas):
            results += run_module(module, image)
    finally:
        h.cleanup()
        left = h.docker("ps", "-aq", "--filter", f"label={h.RUN_LABEL}={h.RUN_ID}", check_exit=False).split()
        if left:
            print(f"warning: containers left behind: {left}", flush=True)
    failed = [name for name, ok, _ in results if not ok]
    print(f"container tests: {len(results) - len(failed)} passed, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else ""), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
