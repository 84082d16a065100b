from rest_framework import serializers

from .models import Order


class OrderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Order
        fields = ["id", "sku", "quantity", "note", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_sku(self, value: str) -> str:
        if not value.replace("-", "").isalnum():
            raise serializers.ValidationError("letters, digits and dashes only")
        return value.upper()
