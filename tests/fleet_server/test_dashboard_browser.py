"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver through Selenium): log in, see the
devices and their versions, open a device page with its charts, be refused an action as a viewer, and read it on a
phone-sized screen. Screenshots are kept in the test's tmp dir. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import time

import paho.mqtt.client as mqtt
import pytest

from fleet.server.loadgen import Publisher, metric_record
from tests.fleet_server.conftest import FleetServer, add_user, cli
from tests.integration.helpers import wait_until
from tests.mqtt_broker import Mosquitto

pytestmark = pytest.mark.mqtt


def _browser(width: int = 1280, height: int = 900):  # noqa: ANN202
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")
    if driver is None:
        raise RuntimeError("chromedriver is not installed: apt-get install -y chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def _seed(port: int) -> None:
    """Three devices on two versions, one drifting, with retained online states and a few minutes of metrics."""
    pub = Publisher(port, client_id="seed")
    now = time.time()
    for dev, version in (("cam-a", "1.0.0"), ("cam-b", "1.1.0"), ("cam-c", "1.1.0")):
        pub.send(dev, [metric_record(dev, now - 300 + 10 * i, version) for i in range(30)])
        state = {"schema": "state/1", "device": dev, "online": dev != "cam-c", "ts": now, "model": f"sim-{version}"}
        pub.client.publish(f"edge/devices/{dev}/state", json.dumps(state), qos=1, retain=True).wait_for_publish(10)
    drift = {"schema": "event/1", "type": "drift", "device": "cam-b", "ts": now - 60, "model": "sim",
             "version": "1.1.0", "feature": "brightness", "reference": {"kind": "device"},
             "scores": {"d": 6.2}, "thresholds": {"raise": 3.0, "clear": 2.0}}  # as edge_runtime/schemas/event.json
    pub.send("cam-b", [drift], kind="event")
    pub.close()


def test_a_viewer_logs_in_sees_the_fleet_and_device_charts_and_is_refused_an_action(db_url, tmp_path):
    from selenium.webdriver.common.by import By

    broker = Mosquitto(tmp_path / "broker").start()
    server = FleetServer(broker.port, db_url, tmp_path / "fleet")
    server.token = add_user(db_url, "vera", "viewer", password="viewer-pass-1")
    browser = None
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        server.start()
        _seed(broker.port)
        wait_until(lambda: server.get("/api/v1/overview")[1]["devices"] == 3
                   and server.get("/api/v1/overview")[1]["drifting"] == 1, 60)
        browser = _browser()
        # given the login page, when a wrong password is tried, then it is refused
        browser.get(server.url + "/")
        assert browser.current_url.endswith("/login")
        browser.find_element(By.ID, "username").send_keys("vera")
        browser.find_element(By.ID, "password").send_keys("wrong-password")
        browser.find_element(By.ID, "login").click()
        assert "wrong user name or password" in browser.find_element(By.ID, "flash").text
        # when the viewer logs in, then the overview lists the devices (drifting first) and both versions
        browser.find_element(By.ID, "username").send_keys("vera")
        browser.find_element(By.ID, "password").send_keys("viewer-pass-1")
        browser.find_element(By.ID, "login").click()
        assert browser.find_element(By.ID, "n-devices").text == "3"
        assert browser.find_element(By.ID, "n-online").text == "2"
        rows = browser.find_elements(By.CSS_SELECTOR, "#devices tr")[1:]
        assert [r.find_element(By.TAG_NAME, "a").text for r in rows] == ["cam-b", "cam-c", "cam-a"]
        versions = browser.find_element(By.ID, "versions").text
        assert "1.0.0" in versions and "1.1.0" in versions
        browser.save_screenshot(str(shots / "overview.png"))
        # when the device page is opened, then it has its charts with data
        browser.find_element(By.LINK_TEXT, "cam-a").click()
        assert browser.find_element(By.ID, "device-id").text == "cam-a"
        browser.save_screenshot(str(shots / "device.png"))
        charts = browser.find_elements(By.CSS_SELECTOR, "#charts svg.chart")
        assert len(charts) == 4
        assert [len(c.find_elements(By.CSS_SELECTOR, "polyline")) for c in charts] == [2, 1, 1, 1]
        # when the viewer asks for a sample upload, then it is refused
        browser.find_element(By.ID, "request-samples").click()
        assert "refused: operator role required" in browser.find_element(By.ID, "flash").text
        browser.save_screenshot(str(shots / "refused.png"))
        audit = add_user(db_url, "otto", "operator")
        assert [(a["user"], a["outcome"]) for a in server.get("/api/v1/audit", token=audit)[1]["items"]] == [
            ("vera", "refused")]
        # and the drift page lists the drifting device
        browser.get(server.url + "/drift")
        assert "cam-b" in browser.find_element(By.ID, "drifting").text
        # and on a phone-sized screen the pages fit the width (tables scroll inside their box)
        browser.set_window_size(390, 844)
        for path in ("/", "/devices/cam-a", "/drift"):
            browser.get(server.url + path)
            assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        browser.save_screenshot(str(shots / "phone-device.png"))
    finally:
        if browser is not None:
            browser.quit()
        server.stop()
        broker.stop()


def test_a_session_action_without_its_csrf_token_is_refused(db_url, tmp_path):
    # given an operator logged in through the login form (a session cookie, as a browser has)
    import urllib.parse
    import urllib.request
    from http.cookiejar import CookieJar

    broker = Mosquitto(tmp_path / "broker").start()
    server = FleetServer(broker.port, db_url, tmp_path / "fleet")
    server.token = add_user(db_url, "olga", "operator", password="operator-pass")
    try:
        server.start()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        state = {"schema": "state/1", "device": "cam-a", "online": True, "ts": time.time()}
        c.publish("edge/devices/cam-a/state", json.dumps(state), qos=1, retain=True).wait_for_publish(10)
        c.disconnect()
        c.loop_stop()
        wait_until(lambda: server.get("/api/v1/devices/cam-a")[0] == 200, 30)
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        form = urllib.parse.urlencode({"username": "olga", "password": "operator-pass"}).encode()
        opener.open(server.url + "/login", data=form, timeout=15).read()
        assert any(ck.name == "fleet_session" for ck in jar)
        # when it posts the action form without the CSRF token, then it is refused before anything happens
        with pytest.raises(urllib.error.HTTPError) as exc:
            opener.open(server.url + "/devices/cam-a/upload-samples", data=b"max=3", timeout=15)
        assert exc.value.code == 403 and "CSRF" in exc.value.read().decode()
        # and with the token but no operator key on the server, it is refused as such
        page = opener.open(server.url + "/devices/cam-a", timeout=15).read().decode()
        token = page.split('name="csrf" value="')[1].split('"')[0]
        with pytest.raises(urllib.error.HTTPError) as exc:
            opener.open(server.url + "/devices/cam-a/upload-samples",
                        data=urllib.parse.urlencode({"csrf": token, "max": 3}).encode(), timeout=15)
        assert exc.value.code == 409 and "no operator key" in exc.value.read().decode()
        # and `fleet status` reads the device from the server when one is configured
        r = cli("fleet", "status", "--server", server.url, env={"EDGE_FLEET_TOKEN": server.token})
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[1].split()[:2] == ["cam-a", "True"]
        r = cli("fleet", "status", "--server", server.url, env={"EDGE_FLEET_TOKEN": "wrong"})
        assert r.returncode == 2 and "answered 401" in r.stderr and "Traceback" not in r.stderr
    finally:
        server.stop()
        broker.stop()
