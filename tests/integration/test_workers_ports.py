"""`fraudscore run --workers N`: a taken worker port stops every worker with exit 2."""

from __future__ import annotations





def test_a_taken_worker_port_stops_every_worker_with_exit_2(small_bundle) -> None:
    # A worker that cannot start is not restarted for ever: exit 2, as a single process would.
    import socket
    import subprocess

    from commands import EXE
    from kafka_helpers import free_port

    port = free_port(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))  # worker 0's port
        taken.listen()
        done = subprocess.run([EXE, "run", "--bundle", str(small_bundle), "--bootstrap-servers", "127.0.0.1:1",
                               "--input-topic", "a", "--output-topic", "b", "--alerts-topic", "c", "--dlq-topic", "d",
                               "--group-id", "g", "--input", "features", "--workers", "2", "--metrics-port", str(port),
                               "--startup-timeout", "30"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"--metrics-port {port + 1}: cannot listen" in done.stderr
    assert "stopping every worker" in done.stderr
