"""Three replicas from deploy/compose.yaml, run as it is, behind the client-side balancer.

The load balancer is tests/containers/balancer.py (a readiness-probing, retrying client-side
spreader on the host, talking to each replica's address on the compose network). The compose
project has a unique name; everything it made is removed at the end (`down -v`), failure or not.
"""

import json
import os
import subprocess
import time

import harness as h
from balancer import Balancer, Load
from harness import check, log

POLL_MS = 1000
DRAIN_MS = 2000
CONVERGENCE = POLL_MS / 1000 + 1.0     # poll_interval_ms + 1 s


class Context:
    def __init__(self, image):
        self.image = image
        self.project = h.unique("replicas").replace("-", "_")
        self.network = f"{self.project}_default"
        self.env = dict(os.environ, WICK_IMAGE=image, WICK_PUBLISH="127.0.0.1:", WICK_INCOMING=h.FIXTURES,
                        WICK_POLL_INTERVAL_MS=str(POLL_MS), WICK_DRAIN_DELAY_MS=str(DRAIN_MS))
        self.balancer = Balancer()
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self):
        started = time.monotonic()
        self.compose("up", "-d")
        self.replicas = self.compose("ps", "-q", "wick").split()
        check(len(self.replicas) == 3, f"compose started {len(self.replicas)} replicas, not 3")
        for replica in self.replicas:
            h.wait_ready(self.addr(replica))
            self.balancer.add(replica[:12], self.addr(replica))
        self.ready_after = time.monotonic() - started

    def compose(self, *args, timeout=180):
        done = subprocess.run([*h.compose_command(), "-p", self.project, "-f", os.path.join(h.ROOT, "deploy", "compose.yaml"),
                               *args], env=self.env, capture_output=True, timeout=timeout)
        if done.returncode != 0:
            raise h.TestFailure(f"compose {' '.join(args)}: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    def addr(self, container):
        return (h.container_ip(container, self.network), 8080)

    def add_replica(self):
        """A fourth replica from compose (as a rolling restart adds one); returns its id once ready."""
        before = set(self.compose("ps", "-q", "wick").split())
        self.compose("up", "-d", "--no-deps", "--no-recreate", "--scale", f"wick={len(before) + 1}", "wick")
        new = set(self.compose("ps", "-q", "wick").split()) - before
        check(len(new) == 1, f"scaling up added {len(new)} replicas")
        replica = new.pop()
        h.wait_ready(self.addr(replica))
        return replica

    def close(self):
        self.balancer.close()
        try:
            self.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=120)
        finally:
            # Whatever compose left behind (a failed `down`), by its project label.
            selector = f"label=com.docker.compose.project={self.project}"
            ids = h.docker("ps", "-aq", "--filter", selector, check_exit=False).split()
            if ids:
                h.docker("rm", "-f", "-v", *ids, check_exit=False)
            for kind in ("network", "volume"):
                names = h.docker(kind, "ls", "-q", "--filter", selector, check_exit=False).split()
                if names:
                    h.docker(kind, "rm", *names, check_exit=False)


def digits_load(ctx, duration, **kwargs):
    digits = h.read_safetensors(h.fixture("digits_test.safetensors"))
    rows, logits = h.rows_of(digits["x"])[:2], h.rows_of(digits["logits"])[:2]
    return Load(ctx.balancer, "digits", "input", rows, {h.sha256_of(h.demo_model("digits")): logits},
                duration=duration, **kwargs)


def test_compose_runs_three_ready_replicas(ctx):
    for replica in ctx.replicas:
        check(h.inspect(replica, "{{.HostConfig.ReadonlyRootfs}}") == "true", f"{replica[:12]} is writable")
        mounts = json.loads(h.inspect(replica, "{{json .Mounts}}"))
        models = [m for m in mounts if m["Destination"] == "/models"]
        check(models and models[0]["Type"] == "volume" and not models[0]["RW"],
              f"{replica[:12]}: /models is not the shared read-only volume: {models}")
    check(len({m["Name"] for r in ctx.replicas for m in json.loads(h.inspect(r, "{{json .Mounts}}"))
               if m["Destination"] == "/models"}) == 1, "the replicas do not share one volume")
    log(f"3 replicas ready {ctx.ready_after:.1f} s after `docker-compose up`, one read-only volume")


def test_one_publish_reaches_every_replica(ctx):
    v1 = h.read_safetensors(h.fixture("simple_io.safetensors"))
    v2 = h.read_safetensors(h.fixture("simple_v2_io.safetensors"))
    check(v1["x"] == v2["x"], "the two simple fixtures do not share their inputs")
    v1_sha, v2_sha = h.sha256_of(h.demo_model("simple")), h.sha256_of(h.fixture("simple_v2.safetensors"))
    expected = {v1_sha: h.rows_of(v1["y"]), v2_sha: h.rows_of(v2["y"])}
    with Load(ctx.balancer, "simple", "input", h.rows_of(v1["x"]), expected, duration=30, record=True) as load:
        check(load.wait_for_requests(100), f"the load does not flow: {load.stats.summary()}")
        out = ctx.compose("run", "--rm", "publisher", "simple", "2", "simple_v2.safetensors")
        renamed = float(out.strip().split()[-1])        # the publisher's clock is this host's

        def everyone_switched():
            with load.stats.lock:
                return {r for _, r, sha in load.stats.responses if sha == v2_sha} >= {r[:12] for r in ctx.replicas}

        h.wait_until(everyone_switched, max(0.0, renamed + CONVERGENCE + 2 - time.time()),
                     what="every replica to answer with version 2")
        time.sleep(0.3)
        stats = load.stop()
    check(stats.failures == 0, f"failed requests during the publish: {stats.failed}")
    first_new, last_old = {}, {}
    for t, replica, sha in stats.responses:
        if sha == v2_sha:
            first_new[replica] = min(first_new.get(replica, t), t)
        else:
            last_old[replica] = max(last_old.get(replica, t), t)
    for replica in (r[:12] for r in ctx.replicas):
        took = first_new[replica] - renamed
        check(took <= CONVERGENCE, f"{replica} served version 2 {took:.2f} s after the rename (limit {CONVERGENCE} s)")
        check(last_old.get(replica, 0) <= first_new[replica] + 0.05,
              f"{replica} answered with version 1 {last_old[replica] - first_new[replica]:.3f} s after version 2")
    both = max(last_old.values()) - min(first_new.values())
    check(both <= CONVERGENCE, f"two versions were served side by side for {both:.2f} s (window {CONVERGENCE} s)")
    log(f"version 2 on every replica {max(first_new.values()) - renamed:.2f} s after the rename "
        f"(each: {', '.join(f'{first_new[r] - renamed:.2f}' for r in sorted(first_new))} s); "
        f"two versions side by side for {max(both, 0):.2f} s; {stats.summary()}")


def test_killing_a_replica_under_load_fails_no_request(ctx):
    victim = ctx.replicas[0]
    with digits_load(ctx, duration=30) as load:
        check(load.wait_for_requests(300), f"the load does not flow: {load.stats.summary()}")
        check(victim[:12] in load.stats.served_by, "the replica to kill got no traffic before the kill")
        h.docker("kill", victim)
        killed_at = load.stats.ok
        time.sleep(0.5)
        served_by_victim = load.stats.served_by.get(victim[:12], 0)
        check(load.wait_for_requests(500), f"the load stalled after the kill: {load.stats.summary()}")
        stats = load.stop()
    check(stats.failures == 0, f"failed requests around the kill: {stats.failed}")
    check(stats.served_by.get(victim[:12], 0) == served_by_victim, "the killed replica kept answering")
    log(f"docker kill {victim[:12]} after {killed_at} requests: {stats.summary()}")
    # Back to three replicas for the next test: the killed one is replaced.
    ctx.balancer.remove(victim[:12])
    h.docker("rm", "-f", "-v", victim)
    replacement = ctx.add_replica()
    ctx.balancer.add(replacement[:12], ctx.addr(replacement))
    ctx.replicas = [replacement if r == victim else r for r in ctx.replicas]


def test_rolling_restart_under_load_fails_no_request(ctx):
    stops = []
    with digits_load(ctx, duration=120) as load:
        check(load.wait_for_requests(300), f"the load does not flow: {load.stats.summary()}")
        for old in list(ctx.replicas):
            new = ctx.add_replica()                       # ready before the old one is stopped
            ctx.balancer.add(new[:12], ctx.addr(new))
            check(load.wait_for_requests(50), f"the load stalled: {load.stats.summary()}")
            began = time.monotonic()
            h.docker("stop", "-t", "30", old, timeout=60)
            stops.append(time.monotonic() - began)
            code = h.inspect(old, "{{.State.ExitCode}}")
            check(code == "0", f"{old[:12]} exited {code} on docker stop")
            ctx.balancer.remove(old[:12])
            h.docker("rm", "-v", old)
            ctx.replicas = [new if r == old else r for r in ctx.replicas]
        check(load.wait_for_requests(100), f"the load stalled: {load.stats.summary()}")
        stats = load.stop()
    check(stats.failures == 0, f"failed requests during the rolling restart: {stats.failed}")
    # Readiness turned 503 at once and the listener stayed open for the drain delay: the balancer
    # moved away before any connection closed, so no request had to be retried after being sent.
    check(stats.retries["cut_fresh"] == 0 and stats.retries["cut_reused"] == 0,
          f"requests were cut by a stopping replica: {stats.retries}")
    for replica in ctx.replicas:
        check(stats.served_by.get(replica[:12], 0) > 0, f"the new replica {replica[:12]} got no traffic")
    log(f"3 replicas replaced one by one, stops took {', '.join(f'{s:.1f}' for s in stops)} s, exit 0; "
        f"{stats.summary()}")


TESTS = [
    test_compose_runs_three_ready_replicas,
    test_one_publish_reaches_every_replica,
    test_killing_a_replica_under_load_fails_no_request,
    test_rolling_restart_under_load_fails_no_request,
]
