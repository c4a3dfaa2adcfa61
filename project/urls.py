from django.contrib import admin
from django.urls import include, path

from project import views

urlpatterns = [
    # The live demo page (myko.js in the browser): README, "In the browser".
    path("", views.index, name="demo-index"),
    path("admin/", admin.site.urls),
    # /healthz, /readyz and /metrics (MYKO["METRICS"]): README, "Operations".
    path("", include("myko_django.urls")),
]
