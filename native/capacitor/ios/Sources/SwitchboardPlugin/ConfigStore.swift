// The core's saved configuration (server, device, user token) in the
// Keychain, so a VoIP push that relaunches a killed app can rebuild the
// core inside the PushKit callback. `AfterFirstUnlock`: a call can ring a
// locked phone (after its first unlock since boot), so the item must be
// readable then; `ThisDeviceOnly`: never restored onto another device.

import Foundation
import Security

final class ConfigStore {
    private let service = "dev.switchboard.capacitor"
    private let account = "client-config"

    func load() -> String? {
        var query = baseQuery()
        query[kSecReturnData as String] = true
        query[kSecMatchLimit as String] = kSecMatchLimitOne
        var item: CFTypeRef?
        guard SecItemCopyMatching(query as CFDictionary, &item) == errSecSuccess,
              let data = item as? Data else { return nil }
        return String(data: data, encoding: .utf8)
    }

    func save(_ json: String) {
        let data = Data(json.utf8)
        let update: [String: Any] = [
            kSecValueData as String: data,
            kSecAttrAccessible as String: kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly,
        ]
        let status = SecItemUpdate(baseQuery() as CFDictionary, update as CFDictionary)
        if status == errSecItemNotFound {
            var add = baseQuery()
            add[kSecValueData as String] = data
            add[kSecAttrAccessible as String] = kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly
            SecItemAdd(add as CFDictionary, nil)
        }
    }

    /// Signing out: the next push finds no configuration (and reports and
    /// ends any ring, as Apple requires).
    func clear() {
        SecItemDelete(baseQuery() as CFDictionary)
    }

    private func baseQuery() -> [String: Any] {
        [
            kSecClass as String: kSecClassGenericPassword,
            kSecAttrService as String: service,
            kSecAttrAccount as String: account,
        ]
    }
}
