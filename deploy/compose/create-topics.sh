#!/usr/bin/env bash
# Creates every topic of the pathway on compose's single broker (automatic creation is off).
# The list is pathway_schemas.topics.all_topics() for the providers in config/providers.json;
# tests/deploy checks that it stays so. Partitions and retention as in deploy/k8s/base/kafka-topics.yaml.
set -euo pipefail

BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
DAY_MS=86400000

create() { # topic partitions retention-days
    /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
        --topic "$1" --partitions "$2" --replication-factor 1 \
        --config "retention.ms=$(($3 * DAY_MS))" --config min.insync.replicas=1
}

# canonical: the event log, 400 days
create imaging.referral.v1 6 400
create imaging.vetting.v1 6 400
create imaging.booking.v1 6 400
create imaging.examination.v1 6 400
create imaging.report.v1 6 400
create imaging.notification.v1 6 400
# intake from practice systems, 7 days
create imaging.referral.intake.v1 3 7
create imaging.referral.intake.replies.v1 3 7
# dead letters, 90 days (until triaged)
create imaging.deadletter.request.v1 3 90
create imaging.deadletter.vetting.v1 3 90
create imaging.deadletter.scheduling.v1 3 90
create imaging.deadletter.reporting.v1 3 90
create imaging.deadletter.notify.v1 3 90
# providers, 30 days
create imaging.provider.rxa01.inbound.v1 3 30
create imaging.provider.rxa01.outbound.v1 3 30
create imaging.provider.nwx02.inbound.v1 3 30
create imaging.provider.nwx02.outbound.v1 3 30

echo "topics ready"
