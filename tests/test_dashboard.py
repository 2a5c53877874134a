"""``lakehouse dashboard`` in a real headless browser (Debian's Chromium, driven by Selenium with
the installed chromedriver): against a lake the pipeline filled, every chart draws its data
marks, the product revenue shown equals Spark SQL over ``gold.product_sales_live`` (closed and open windows), no panel is empty,
and a screenshot is kept in reports/ (CI uploads it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from serving.catalog import register_tables
from common.clients import port_open
from data_quality.runner import record, validate
from devstack.browser import ensure_browser
from devstack.stack import wait_until
from tests.conftest import ROOT, settings_env

# GX keeps its suites and Data Docs in one folder (.gx/): its users share one worker of make test
pytestmark = [pytest.mark.stack, pytest.mark.xdist_group("gx")]
CHARTS = 10  # sales, revenue, log levels, hosts, segments; rows/s, duration, behind, latency, late/quarantined
# a chart's data marks: Vega draws SVG here, one path per line series or bar (axes and legends
# are other groups)
MARKS = """
return Array.from(arguments[0].querySelectorAll('g.role-mark.mark-line > path, g.role-mark.mark-rect > path, g.role-mark.mark-symbol > path'))
  .filter(p => (p.getAttribute('d') || '').length > 10).length;"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_shows_gold_and_health_in_a_browser(spark, pipeline_lake, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lake = pipeline_lake  # filled once by the pipeline (10 minutes of event time), shared with the dq tests
    record(spark, lake, validate(spark, lake, layers=("bronze",), docs=False))
    register_tables(spark, lake)
    expected = {r.product_name: r.ca_total for r in spark.sql(
        "SELECT product_name, round(sum(ca_total), 2) AS ca_total FROM gold.product_sales_live GROUP BY product_name"
    ).collect()}
    assert len(expected) >= 5

    chromium, chromedriver = ensure_browser()
    port = _free_port()
    app = subprocess.Popen([sys.executable, "-m", "app.cli", "dashboard", "--port", str(port)],
                           env=settings_env(lake), cwd=ROOT, stdout=open(tmp_path / "dashboard.log", "w"),
                           stderr=subprocess.STDOUT, start_new_session=True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,3600"):
        options.add_argument(arg)
    driver = None
    try:
        wait_until(lambda: port_open("127.0.0.1", port) or app.poll() is not None, 90, "the dashboard to listen")
        assert app.poll() is None, (tmp_path / "dashboard.log").read_text()[-3000:]
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
        driver.get(f"http://127.0.0.1:{port}/")
        charts = '[data-testid$="VegaLiteChart"]'

        def drawn(d):
            found = d.find_elements(By.CSS_SELECTOR, charts)
            return len(found) >= CHARTS and all(d.execute_script(MARKS, c) > 0 for c in found) and found

        found = WebDriverWait(driver, 120, poll_frequency=1).until(drawn)
        assert driver.execute_script(MARKS, found[1]) == len(expected)  # product revenue: a bar per product
        text = driver.find_element(By.TAG_NAME, "body").text
        assert "no gold data yet" not in text and "no micro-batch logged yet" not in text
        assert "no data-quality run yet" not in text
        assert "no schema drift" in text  # the pipeline's producers sent nothing the schemas do not know

        # the product revenue table: the same values as Spark SQL over the same table
        tables = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stTable"] table')
        shown = {}
        for row in tables[0].find_elements(By.CSS_SELECTOR, "tbody tr"):
            cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "th, td")]
            shown[cells[0]] = round(float(cells[1].replace(",", "")), 2)
        assert shown == expected
        os.makedirs(ROOT / "reports", exist_ok=True)
        driver.save_screenshot(str(ROOT / "reports" / "dashboard.png"))
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(app.pid, signal.SIGTERM)
        app.wait(timeout=30)
