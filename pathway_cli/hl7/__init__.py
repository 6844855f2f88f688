"""HL7 v2 provider gateway: one process per provider between its RIS (MLLP) and its Kafka topics.

Orders from the provider's outbound topic go to the RIS as ORM^O01; status updates and
results from the RIS (ADT^A10, ORM^O01 status changes, ORU^R01) come back as the provider's
inbound events. The provider's identity is the gateway's configuration, never a message
field. Field-by-field mappings: docs/interop.md.
"""
