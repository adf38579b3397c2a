import subprocess

from tests.mqtt_broker import Mosquitto, make_tls


def test_broker_restarts_on_same_port_and_keeps_retained(tmp_path, broker):
    pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "t/x", "-m", "hello", "-r", "-q", "1"]
    subprocess.run(pub, check=True, timeout=10)
    broker.restart()
    sub = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "t/x", "-C", "1", "-W", "5"]
    out = subprocess.run(sub, check=True, capture_output=True, text=True, timeout=10)
    assert out.stdout.strip() == "hello"


def test_tls_and_password_broker_refuses_wrong_password(tmp_path):
    tls = make_tls(tmp_path / "tls")
    b = Mosquitto(tmp_path / "b", tls=tls, passwords={"dev1": "secret"}).start()
    try:
        base = ["mosquitto_pub", "-h", "localhost", "-p", str(b.port), "--cafile", str(tls.ca_cert)]
        base += ["-t", "a", "-m", "1"]
        ok = subprocess.run(base + ["-u", "dev1", "-P", "secret"], capture_output=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
        bad = subprocess.run(base + ["-u", "dev1", "-P", "wrong"], capture_output=True, timeout=10)
        assert bad.returncode != 0
    finally:
        b.stop()
