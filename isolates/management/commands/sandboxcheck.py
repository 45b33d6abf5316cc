"""manage.py sandboxcheck: which containment layers this machine gives, found by probing."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from isolates.containment import missing_layers, parse_required, probe_layers


class Command(BaseCommand):
    help = (
        "Run the platform's containment probes on this machine (the isolate launcher, one "
        "sandboxed command, cgroups) and print which layers are active and what each stops."
    )

    def add_arguments(self, parser):
        parser.add_argument("--require", action="append", default=None, metavar="LAYER",
                            help="fail unless this layer is active (repeatable); default: SYMPOSIUM_REQUIRED_LAYERS")

    def handle(self, require, **options):
        from django.conf import settings

        try:
            required = parse_required(require if require is not None else settings.SYMPOSIUM_REQUIRED_LAYERS)
        except ImproperlyConfigured as e:
            raise CommandError(str(e)) from None
        layers = probe_layers()
        for layer in layers:
            mark = self.style.SUCCESS("active ") if layer.active else self.style.ERROR("MISSING")
            self.stdout.write(f"{mark} {layer.title}: {layer.detail}")
            for attack in layer.stops:
                self.stdout.write(f"          {'stops' if layer.active else 'would stop'}: {attack}")
        missing = missing_layers(layers, required)
        active = sum(layer.active for layer in layers)
        if missing:
            raise CommandError(" ".join(missing))
        self.stdout.write(f"{active} of {len(layers)} layers active" + (f"; all {len(required)} required present." if required else "."))
