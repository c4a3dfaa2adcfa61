from django.apps import AppConfig


class BenchPeerConfig(AppConfig):
    name = "bench.peer"
    label = "benchpeer"
