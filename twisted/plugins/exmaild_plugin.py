"""twistd plugin: `twistd -n exmaild [--config FILE]`."""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: $EXMAILD_CONFIG, "
         "./exmaild.toml, /etc/exmaild/exmaild.toml, else embedded with data in ./var)"],
    ]


@implementer(IServiceMaker, IPlugin)
class ExmaildServiceMaker:
    tapname = "exmaild"
    description = "exmaild enterprise mail server (SMTP, IMAP4, POP3, admin API)"
    options = Options

    def makeService(self, options: Options):  # type: ignore[no-untyped-def]
        import sys

        from exmaild.config import ConfigError, load_config
        from exmaild.configfind import find_config
        from exmaild.errors import StartupError, report
        from exmaild.service import make_service
        from exmaild.store.schema import SchemaError

        # Under `twistd -n` with no log option of twistd's own, the readable
        # log on stdout is exmaild's (same format, far less CPU per line).
        twistd = getattr(options, "parent", None) or {}
        stdout_log = bool(
            twistd.get("nodaemon")
            and twistd.get("logfile") in (None, "", "-")
            and not twistd.get("syslog")
            and not twistd.get("logger")
        )
        try:
            cfg = load_config(find_config(options["config"]))
            return make_service(cfg, stdout_log=stdout_log)
        except StartupError as e:
            report("exmaild", e)
        except ConfigError as e:
            sys.stderr.write("exmaild: configuration errors:\n")
            for err in e.errors:
                sys.stderr.write(f"  {err}\n")
        except SchemaError as e:
            sys.stderr.write(f"exmaild: {e}\n")
        raise SystemExit(1)


serviceMaker = ExmaildServiceMaker()
