"""We test these aspects of the command line (agent/__main__.py):

- flags map onto daemon.Options; NODE_NAME and KUBE_IPSEC_NAMESPACE are the fallbacks;
- a missing node name is an error; JSON logs are one object per line.
"""

import json
import logging

import pytest

from kube_ipsec.agent import __main__ as cli


def test_flags_map_onto_options(monkeypatch):
    monkeypatch.delenv("NODE_NAME", raising=False)
    options, log_spec = cli.parse_args([
        "--node-name", "node-a", "--namespace", "ns", "--metrics-port", "9200",
        "--ike-address", "127.0.0.2", "--ike-port", "1500", "--natt-port", "14500",
        "--kubeconfig", "k.yaml", "--log-format", "json", "--apiserver-port", "443",
        "--apiserver-port", "6443", "--fake-kernel"])
    assert (options.node_name, options.namespace, options.metrics_port) == ("node-a", "ns", 9200)
    assert (options.ike_address, options.ike_port, options.natt_port) == ("127.0.0.2", 1500,
                                                                          14500)
    assert options.kubeconfig == "k.yaml" and options.fake_kernel and options.socket_bypass
    assert options.apiserver_ports == (443, 6443)
    assert log_spec == "json:INFO"


def test_environment_fallbacks(monkeypatch):
    monkeypatch.setenv("NODE_NAME", "node-env")
    monkeypatch.setenv("KUBE_IPSEC_NAMESPACE", "ns-env")
    options, _ = cli.parse_args([])
    assert (options.node_name, options.namespace) == ("node-env", "ns-env")
    assert options.metrics_port == 9101 and options.ike_port == 500 and options.natt_port == 4500


def test_node_name_is_required(monkeypatch):
    monkeypatch.delenv("NODE_NAME", raising=False)
    with pytest.raises(SystemExit):
        cli.parse_args([])


def test_json_log_lines():
    record = logging.LogRecord("kube_ipsec.agent", logging.INFO, __file__, 1, "peer %s up",
                               ("node-b",), None)
    entry = json.loads(cli.JsonFormatter().format(record))
    assert entry["message"] == "peer node-b up" and entry["level"] == "INFO"
