"""Secrets come only from settings: variables, EHB_<SETTING>_FILE files or EHB_SECRETS_DIR
(Docker secrets); no default secret in code; production refuses missing or placeholder
secrets, through the command line, in one line, before touching any service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from ehb.kafka import _security, faust_broker_options
from ehb.settings import Settings

REAL_KEY = "k" * 20 + "7Qx9-Lm2vR8s-Tz4W"  # 37 characters, not a placeholder
REAL_DB = "postgresql://ehb_sink:Vq8-rT2x-Lp9z@db.internal:5432/ehb"


def _ehb(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("EHB_")}
    return subprocess.run(
        [sys.executable, "-m", "ehb", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def _production(**extra: str) -> dict[str, str]:
    return {
        "EHB_ENV": "production",
        "EHB_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "EHB_DATABASE_URL": REAL_DB,
        "EHB_CITIZEN_KEY_SECRET": REAL_KEY,
        **extra,
    }


def _refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error:"), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_no_secret_has_a_default_in_code() -> None:
    for name, field in Settings.model_fields.items():
        if field.annotation is not None and "SecretStr" in str(field.annotation):
            assert field.default is None, name


@pytest.mark.parametrize("command", [["settings"], ["worker"], ["sink"]])
def test_production_without_secrets_refuses_to_start(command: list[str], tmp_path: Path) -> None:
    result = _ehb(command, {"EHB_ENV": "production"}, tmp_path)
    _refused(result, "EHB_KAFKA_BOOTSTRAP", "EHB_DATABASE_URL", "EHB_CITIZEN_KEY_SECRET")


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("EHB_CITIZEN_KEY_SECRET", "change-me-change-me-change-me-change-me", "placeholder"),
        ("EHB_CITIZEN_KEY_SECRET", "short", "at least 32"),
        ("EHB_DATABASE_URL", "postgresql://postgres:postgres@db:5432/ehb", "EHB_DATABASE_URL"),
        ("EHB_KAFKA_SASL_PASSWORD", "changeme", "EHB_KAFKA_SASL_PASSWORD"),
    ],
)
def test_production_refuses_default_secrets(
    variable: str, value: str, said: str, tmp_path: Path
) -> None:
    env = _production(
        EHB_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        EHB_KAFKA_SASL_USERNAME="ehb",
        EHB_KAFKA_SASL_PASSWORD="Zt6-pW3q-nM8k",
    )
    env[variable] = value
    _refused(_ehb(["worker"], env, tmp_path), said)


def test_production_sasl_needs_credentials(tmp_path: Path) -> None:
    env = _production(EHB_KAFKA_SECURITY_PROTOCOL="SASL_SSL", EHB_KAFKA_SASL_USERNAME="ehb")
    _refused(_ehb(["sink"], env, tmp_path), "EHB_KAFKA_SASL_PASSWORD")


def test_secrets_from_a_secrets_dir_and_file_variables(tmp_path: Path) -> None:
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "ehb_citizen_key_secret").write_text(REAL_KEY + "\n")
    (secrets / "ehb_kafka_sasl_password").write_text("Zt6-pW3q-nM8k\n")
    database_url = tmp_path / "database_url"
    database_url.write_text(REAL_DB + "\n")
    env = {
        "EHB_ENV": "production",
        "EHB_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "EHB_SECRETS_DIR": str(secrets),
        "EHB_DATABASE_URL_FILE": str(database_url),
        "EHB_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "EHB_KAFKA_SASL_USERNAME": "ehb",
        "COLUMNS": "250",
    }
    result = _ehb(["settings"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    for secret in (REAL_KEY, "Zt6-pW3q-nM8k", "Vq8-rT2x-Lp9z"):
        assert secret not in result.stdout + result.stderr  # shown masked
    assert "**********" in result.stdout


def test_file_values_reach_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ehb_kafka_sasl_password").write_text("from-the-dir\n")
    password_file = tmp_path / "password"
    password_file.write_text("from-a-file-variable\n")
    monkeypatch.setenv("EHB_SECRETS_DIR", str(tmp_path))
    assert Settings().kafka_sasl_password == SecretStr("from-the-dir")
    monkeypatch.setenv("EHB_KAFKA_SASL_PASSWORD_FILE", str(password_file))
    assert Settings().kafka_sasl_password.get_secret_value() == "from-a-file-variable"
    monkeypatch.setenv("EHB_KAFKA_SASL_PASSWORD", "from-the-variable")
    assert Settings().kafka_sasl_password.get_secret_value() == "from-the-variable"


def test_sasl_and_tls_settings_reach_both_client_libraries(tmp_path: Path) -> None:
    """confluent-kafka (producer, sink, tools) and Faust's aiokafka (worker) alike."""
    import ssl

    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    settings = Settings(
        kafka_bootstrap="k1:9093,k2:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="ehb",
        kafka_sasl_password=SecretStr("pw-1"),
        kafka_ssl_cafile=ca,
    )
    librdkafka = _security(settings)
    assert librdkafka == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "ehb",
        "sasl.password": "pw-1",
        "ssl.ca.location": str(ca),
    }
    options = faust_broker_options(settings)
    assert options["broker"] == "kafka://k1:9093,k2:9093"
    auth = credentials_to_aiokafka_auth(options["broker_credentials"])
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("ehb", "pw-1")
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    plain = faust_broker_options(
        settings.model_copy(
            update={"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_ssl_cafile": None}
        )
    )
    auth = credentials_to_aiokafka_auth(plain["broker_credentials"])
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None
    tls_only = faust_broker_options(settings.model_copy(update={"kafka_security_protocol": "SSL"}))
    auth = credentials_to_aiokafka_auth(tls_only["broker_credentials"])
    assert auth["security_protocol"] == "SSL"
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
