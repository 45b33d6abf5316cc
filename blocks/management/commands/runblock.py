from blocks.models import Block
from blocks.service import BlockError, version_to_run
from isolates.management.commands.runblock import Command as RunblockCommand
from isolates.management.commands.runblock import UsageError


class Command(RunblockCommand):
    help = RunblockCommand.help + " With --block SLUG[@N] it runs a saved block: its deployed version, or version N."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--block", default=None, metavar="SLUG[@N]",
                            help="Run a saved block of the tenant: its deployed version, or version N")

    def block_to_run(self, file, tenant, options):
        spec = options.get("block")
        if spec is None:
            return super().block_to_run(file, tenant, options)
        if file is not None:
            raise UsageError("Name a block file or a saved block (--block), not both.")
        slug, _, number = spec.partition("@")
        if number and not number.isdigit():
            raise UsageError(f"--block {spec}: the version after @ is a number, such as {slug}@2.")
        saved = Block.objects.select_related("tenant", "deployed_version").filter(tenant=tenant, slug=slug).first()
        if saved is None:
            raise UsageError(f"The tenant {tenant.slug} has no block {slug!r}.")
        try:
            version = version_to_run(saved, int(number) if number else None)
        except BlockError as e:
            raise UsageError(e.message) from None
        return version.code, saved.file_name, {"block": saved, "version": version}
