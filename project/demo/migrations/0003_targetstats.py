import myko_django.models
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("demo", "0002_note")]

    operations = [
        migrations.CreateModel(
            name="TargetStats",
            fields=[
                (
                    "id",
                    models.CharField(
                        default=myko_django.models.new_id,
                        editable=False,
                        max_length=64,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                ("sets", models.IntegerField(default=0)),
                ("last_name", models.CharField(blank=True, max_length=200)),
            ],
            options={
                "abstract": False,
                "base_manager_name": "objects",
            },
        ),
    ]
