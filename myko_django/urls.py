"""The operations endpoints, for a project's urls.py:

    path("", include("myko_django.urls")),

`/healthz`, `/readyz` and `/metrics` (the last answers only with MYKO["METRICS"] on); see
`myko_django.views`.
"""

from django.urls import path

from myko_django import views

urlpatterns = [
    path("healthz", views.healthz, name="myko-healthz"),
    path("readyz", views.readyz, name="myko-readyz"),
    path("metrics", views.metrics_view, name="myko-metrics"),
]
