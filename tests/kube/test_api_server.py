"""The API server the kube tests run is the release it claims to be: Knative's webhook and
controller check the server version and refuse a build that reports v0.0.0-master."""

from __future__ import annotations

from kubernetes import client

from infergraph.testing.cluster import KUBE_VERSION, Cluster


def test_the_api_server_reports_its_release(cluster: Cluster) -> None:
    info = client.VersionApi(cluster.api).get_code()
    assert info.git_version == KUBE_VERSION
    assert (info.major, info.minor) == ("1", KUBE_VERSION.split(".")[1])
    assert info.git_tree_state == "clean"
