from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("myko_django", "0006_command_params")]

    operations = [
        migrations.CreateModel(
            name="SagaState",
            fields=[
                ("name", models.CharField(max_length=200, primary_key=True, serialize=False)),
                ("position", models.BigIntegerField()),
                ("updated_at", models.DateTimeField()),
            ],
            options={"db_table": "myko_saga", "verbose_name": "saga checkpoint"},
        ),
        migrations.CreateModel(
            name="ParkedEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("saga", models.CharField(max_length=200)),
                ("position", models.BigIntegerField()),
                ("item_type", models.CharField(max_length=100)),
                ("item_id", models.CharField(max_length=255)),
                ("change_type", models.CharField(max_length=3)),
                ("attempts", models.IntegerField(default=0)),
                ("error", models.TextField()),
                ("traceback", models.TextField(blank=True)),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("parked", "parked"),
                            ("retried", "retried"),
                            ("skipped", "skipped"),
                        ],
                        default="parked",
                        max_length=10,
                    ),
                ),
                ("parked_at", models.DateTimeField()),
                ("resolved_at", models.DateTimeField(blank=True, null=True)),
                ("resolved_by", models.CharField(blank=True, max_length=150)),
            ],
            options={
                "db_table": "myko_saga_parked",
                "verbose_name": "parked saga event",
                "indexes": [
                    models.Index(fields=["status", "saga"], name="myko_saga_parked_status")
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("saga", "position"), name="myko_saga_parked_once"
                    )
                ],
            },
        ),
    ]
