from django.db import migrations, models


class Migration(migrations.Migration):
    """A stored command response records a digest of its parameters (issue 13, item 9)."""

    dependencies = [("myko_django", "0005_write_path")]

    operations = [
        migrations.AddField(
            model_name="commandresult",
            name="params_hash",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
    ]
