"""The two instance-wide dynamic partition sets, shared by every site's code location."""

from dagster import DynamicPartitionsDefinition

raw_data_packages = DynamicPartitionsDefinition(name="raw_data_packages")
data_transfer_packages = DynamicPartitionsDefinition(name="data_transfer_packages")
